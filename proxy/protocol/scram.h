// SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it, both sides.
// ScramServer / ScramClient run one exchange each; owned by one session, not thread-safe.
// ScramSecret is immutable; share freely.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "proxy/protocol/crypto_util.h"

namespace pgrelay::protocol {

inline constexpr std::string_view kScramMechanism = "SCRAM-SHA-256";
// With channel binding (RFC 5929 tls-server-end-point), offered over TLS only.
inline constexpr std::string_view kScramPlusMechanism = "SCRAM-SHA-256-PLUS";
inline constexpr std::string_view kChannelBindingType = "tls-server-end-point";
inline constexpr int kScramDefaultIterations = 4096;

// What the server stores for a user (as in pg_authid.rolpassword).
struct ScramSecret {
  std::string salt;  // raw bytes
  int iterations = kScramDefaultIterations;
  Sha256Digest stored_key{};
  Sha256Digest server_key{};
};

ScramSecret MakeScramSecret(std::string_view password, std::string_view salt, int iterations);
ScramSecret MakeScramSecret(std::string_view password);  // random 16-byte salt, 4096 iterations
// Parses PostgreSQL's "SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>".
std::optional<ScramSecret> ParseScramSecret(std::string_view text);
std::string FormatScramSecret(const ScramSecret& secret);  // inverse of ParseScramSecret

enum class ScramStatus {
  kOk,
  kMalformed,   // protocol violation: the client's message does not follow RFC 5802 (08P01)
  kAuthFailed,  // wrong password, or an unknown user (mock exchange) (28P01)
};

// Server side of one exchange. With secret == nullptr it runs a mock exchange (as PostgreSQL
// does for unknown users) that always ends in kAuthFailed, so user existence is not revealed.
class ScramServer {
 public:
  explicit ScramServer(const ScramSecret* secret, std::string server_nonce = {});
  // Over TLS (before HandleClientFirst): `end_point_hash` is the tls-server-end-point data of
  // pgrelay's certificate, and `plus` whether the client chose SCRAM-SHA-256-PLUS. Then "p="
  // must come with PLUS and bind to that hash, and "y,," (the client thinks the server cannot
  // bind, though it offered PLUS: a downgrade) is refused.
  void SetChannelBinding(bool plus, std::string end_point_hash);
  // client-first-message ("n,,n=,r=<nonce>"; "y,," accepted without TLS; "p=tls-server-end-point"
  // only as set by SetChannelBinding). On kOk, *server_first is set.
  ScramStatus HandleClientFirst(std::string_view client_first, std::string* server_first);
  // client-final-message. On kOk, *server_final ("v=...") is set.
  ScramStatus HandleClientFinal(std::string_view client_final, std::string* server_final);

 private:
  enum class Step { kClientFirst, kClientFinal, kDone };
  Step step_ = Step::kClientFirst;
  const ScramSecret* secret_;
  ScramSecret mock_;
  std::string server_nonce_;
  std::string client_first_bare_;
  std::string server_first_;
  std::string combined_nonce_;
  std::string gs2_header_;
  bool tls_ = false;        // SetChannelBinding was called: PLUS was offered
  bool plus_ = false;       // the client chose SCRAM-SHA-256-PLUS
  std::string cbind_data_;  // tls-server-end-point hash, when the client binds
};

// PBKDF2-HMAC-SHA-256 of `password` (the SCRAM SaltedPassword), cached process-wide: a node
// answers every login of a role with the same salt, so pgrelay derives it once. Thread-safe.
Sha256Digest SaltedPassword(std::string_view password, std::string_view salt, int iterations);

// Client side of one exchange (pgrelay logging in to a PostgreSQL node).
class ScramClient {
 public:
  // `user` goes into "n=" (PostgreSQL clients leave it empty: the user is in the startup packet).
  explicit ScramClient(std::string password, std::string client_nonce = {}, std::string user = {});
  // Over TLS (before ClientFirst): with `server_offers_plus` the exchange binds to the node's
  // certificate (tls-server-end-point `end_point_hash`; mechanism SCRAM-SHA-256-PLUS), else
  // the client says it could bind ("y,,"), which lets the server detect a downgrade.
  void SetChannelBinding(bool server_offers_plus, std::string end_point_hash);
  std::string_view mechanism() const { return plus_ ? kScramPlusMechanism : kScramMechanism; }
  std::string ClientFirst();  // "n,,n=,r=<nonce>" (or "y,," / "p=tls-server-end-point,,")
  ScramStatus HandleServerFirst(std::string_view server_first, std::string* client_final);
  // kOk only if the server's signature proves it knows the password.
  ScramStatus VerifyServerFinal(std::string_view server_final);

 private:
  enum class Step { kClientFirst, kServerFirst, kServerFinal, kDone };
  Step step_ = Step::kClientFirst;
  std::string password_;
  std::string client_nonce_;
  std::string user_;
  std::string client_first_bare_;
  std::string gs2_header_ = "n,,";
  std::string cbind_data_;  // the node's tls-server-end-point hash when binding
  bool plus_ = false;
  Sha256Digest server_signature_{};
};

}  // namespace pgrelay::protocol
