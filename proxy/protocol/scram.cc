#include "proxy/protocol/scram.h"

#include <algorithm>
#include <charconv>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pgrelay::protocol {
namespace {

constexpr size_t kNonceBytes = 18;
constexpr size_t kSaltBytes = 16;

std::string NewNonce() { return Base64Encode(RandomBytes(kNonceBytes)); }

// RFC 5802: nonce = printable ASCII except ','.
bool IsValidNonce(std::string_view nonce) {
  if (nonce.empty()) return false;
  for (char c : nonce) {
    if (c < 0x21 || c > 0x7e || c == ',') return false;
  }
  return true;
}

// SCRAM attribute values never contain ',', so a message splits cleanly into "x=value" fields.
std::vector<std::string_view> SplitFields(std::string_view msg) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  while (true) {
    size_t comma = msg.find(',', start);
    if (comma == std::string_view::npos) {
      fields.push_back(msg.substr(start));
      return fields;
    }
    fields.push_back(msg.substr(start, comma - start));
    start = comma + 1;
  }
}

// True if `field` is "<name>=..."; sets *value to the part after '='.
bool ReadAttr(std::string_view field, char name, std::string_view* value) {
  if (field.size() < 2 || field[0] != name || field[1] != '=') return false;
  *value = field.substr(2);
  return true;
}

// An optional extension attribute ("x=..." with a letter other than the reserved 'm').
bool IsExtension(std::string_view field) {
  if (field.size() < 2 || field[1] != '=') return false;
  char c = field[0];
  return ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) && c != 'm';
}

std::optional<int> ParsePositiveInt(std::string_view text) {
  if (text.empty() || text[0] < '0' || text[0] > '9') return std::nullopt;
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 1) return std::nullopt;
  return value;
}

std::optional<Sha256Digest> DecodeDigest(std::string_view b64) {
  std::optional<std::string> raw = Base64Decode(b64);
  if (!raw || raw->size() != Sha256Digest{}.size()) return std::nullopt;
  Sha256Digest d;
  std::copy(raw->begin(), raw->end(), d.begin());
  return d;
}

// saslname escaping (RFC 5802 section 5.1).
std::string EscapeSaslName(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == ',') {
      out += "=2C";
    } else if (c == '=') {
      out += "=3D";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

Sha256Digest Xor(const Sha256Digest& a, const Sha256Digest& b) {
  Sha256Digest out;
  for (size_t i = 0; i < out.size(); ++i) out[i] = a[i] ^ b[i];
  return out;
}

// Secret used for unknown users. Like PostgreSQL's mock salt it is stable (here for the life of
// the process), so probing the same name twice does not reveal a mock by a changing salt.
const ScramSecret& MockSecret() {
  static const ScramSecret kMock = [] {
    ScramSecret s;
    s.salt = RandomBytes(kSaltBytes);
    s.iterations = kScramDefaultIterations;
    std::string keys = RandomBytes(2 * s.stored_key.size());
    std::copy(keys.begin(), keys.begin() + 32, s.stored_key.begin());
    std::copy(keys.begin() + 32, keys.end(), s.server_key.begin());
    return s;
  }();
  return kMock;
}

}  // namespace

ScramSecret MakeScramSecret(std::string_view password, std::string_view salt, int iterations) {
  Sha256Digest salted = Pbkdf2HmacSha256(password, salt, iterations);
  ScramSecret secret;
  secret.salt = std::string(salt);
  secret.iterations = iterations;
  secret.stored_key = Sha256(AsView(HmacSha256(AsView(salted), "Client Key")));
  secret.server_key = HmacSha256(AsView(salted), "Server Key");
  return secret;
}

ScramSecret MakeScramSecret(std::string_view password) {
  return MakeScramSecret(password, RandomBytes(kSaltBytes), kScramDefaultIterations);
}

std::optional<ScramSecret> ParseScramSecret(std::string_view text) {
  // SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>
  std::string prefix = std::string(kScramMechanism) + "$";
  if (!text.starts_with(prefix)) return std::nullopt;
  text.remove_prefix(prefix.size());
  size_t colon1 = text.find(':');
  size_t dollar = text.find('$');
  if (colon1 == std::string_view::npos || dollar == std::string_view::npos || dollar < colon1) {
    return std::nullopt;
  }
  size_t colon2 = text.find(':', dollar);
  if (colon2 == std::string_view::npos) return std::nullopt;

  std::optional<int> iterations = ParsePositiveInt(text.substr(0, colon1));
  std::optional<std::string> salt = Base64Decode(text.substr(colon1 + 1, dollar - colon1 - 1));
  std::optional<Sha256Digest> stored = DecodeDigest(text.substr(dollar + 1, colon2 - dollar - 1));
  std::optional<Sha256Digest> server = DecodeDigest(text.substr(colon2 + 1));
  if (!iterations || !salt || salt->empty() || !stored || !server) return std::nullopt;
  return ScramSecret{std::move(*salt), *iterations, *stored, *server};
}

std::string FormatScramSecret(const ScramSecret& secret) {
  return std::string(kScramMechanism) + "$" + std::to_string(secret.iterations) + ":" +
         Base64Encode(secret.salt) + "$" + Base64Encode(AsView(secret.stored_key)) + ":" +
         Base64Encode(AsView(secret.server_key));
}

// --- Client: the salted password, derived once per (password, salt, iterations) ---------------

Sha256Digest SaltedPassword(std::string_view password, std::string_view salt, int iterations) {
  // A node keeps one salt per role, so every login pgrelay makes as that role derives the same
  // key: 4096 PBKDF2 rounds (milliseconds of a worker's time) each. Cache it. The key is as
  // secret as the password, which pgrelay already holds in memory; the cache key hashes it.
  static std::mutex mu;
  static std::unordered_map<std::string, Sha256Digest> cache;
  constexpr size_t kMaxEntries = 1024;
  const Sha256Digest password_hash = Sha256(password);
  std::string key(AsView(password_hash));
  key.append(salt).append(std::to_string(iterations));
  {
    std::lock_guard lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  const Sha256Digest salted = Pbkdf2HmacSha256(password, salt, iterations);
  std::lock_guard lock(mu);
  if (cache.size() >= kMaxEntries) cache.clear();
  cache.emplace(std::move(key), salted);
  return salted;
}

// --- Server ---------------------------------------------------------------------------------

ScramServer::ScramServer(const ScramSecret* secret, std::string server_nonce)
    : secret_(secret), server_nonce_(std::move(server_nonce)) {
  if (secret_ == nullptr) mock_ = MockSecret();
  if (server_nonce_.empty()) server_nonce_ = NewNonce();
}

void ScramServer::SetChannelBinding(bool plus, std::string end_point_hash) {
  tls_ = true;
  plus_ = plus;
  cbind_data_ = std::move(end_point_hash);
}

ScramStatus ScramServer::HandleClientFirst(std::string_view client_first,
                                           std::string* server_first) {
  // Every handler runs once, in order; any failure or misordered call ends the exchange.
  if (std::exchange(step_, Step::kDone) != Step::kClientFirst) return ScramStatus::kMalformed;

  // gs2-header: cbind-flag "," [authzid] ","
  size_t comma1 = client_first.find(',');
  if (comma1 == std::string_view::npos) return ScramStatus::kMalformed;
  std::string_view cbind_flag = client_first.substr(0, comma1);
  if (plus_) {
    // SCRAM-SHA-256-PLUS: the client must bind, to the one type pgrelay supports.
    if (cbind_flag != "p=" + std::string(kChannelBindingType)) return ScramStatus::kMalformed;
  } else if (cbind_flag == "y") {
    if (tls_) return ScramStatus::kMalformed;  // PLUS was offered: a downgrade
  } else if (cbind_flag != "n") {
    return ScramStatus::kMalformed;  // "p=" without choosing PLUS
  }
  if (!plus_) cbind_data_.clear();  // binding data goes into c= only when the client binds
  size_t comma2 = client_first.find(',', comma1 + 1);
  if (comma2 != comma1 + 1) return ScramStatus::kMalformed;  // authzid unsupported (as in PG)
  std::string_view bare = client_first.substr(comma2 + 1);

  // client-first-message-bare: n=<user>,r=<nonce>[,ext...]; "m=" is refused.
  std::vector<std::string_view> fields = SplitFields(bare);
  std::string_view user, nonce;
  if (fields.size() < 2 || !ReadAttr(fields[0], 'n', &user) || !ReadAttr(fields[1], 'r', &nonce) ||
      !IsValidNonce(nonce)) {
    return ScramStatus::kMalformed;
  }
  for (size_t i = 2; i < fields.size(); ++i) {
    if (!IsExtension(fields[i])) return ScramStatus::kMalformed;
  }

  const ScramSecret& secret = secret_ != nullptr ? *secret_ : mock_;
  gs2_header_ = std::string(client_first.substr(0, comma2 + 1));
  client_first_bare_ = std::string(bare);
  combined_nonce_ = std::string(nonce) + server_nonce_;
  server_first_ = "r=" + combined_nonce_ + ",s=" + Base64Encode(secret.salt) +
                  ",i=" + std::to_string(secret.iterations);
  *server_first = server_first_;
  step_ = Step::kClientFinal;
  return ScramStatus::kOk;
}

ScramStatus ScramServer::HandleClientFinal(std::string_view client_final,
                                           std::string* server_final) {
  if (std::exchange(step_, Step::kDone) != Step::kClientFinal) return ScramStatus::kMalformed;

  // c=<b64 gs2 header>,r=<combined nonce>[,ext...],p=<b64 proof>
  std::vector<std::string_view> fields = SplitFields(client_final);
  std::string_view binding, nonce, proof_b64;
  if (fields.size() < 3 || !ReadAttr(fields[0], 'c', &binding) ||
      !ReadAttr(fields[1], 'r', &nonce) || !ReadAttr(fields.back(), 'p', &proof_b64)) {
    return ScramStatus::kMalformed;
  }
  for (size_t i = 2; i + 1 < fields.size(); ++i) {
    if (!IsExtension(fields[i])) return ScramStatus::kMalformed;
  }
  if (binding != Base64Encode(gs2_header_ + cbind_data_) || nonce != combined_nonce_) {
    return ScramStatus::kMalformed;
  }
  std::optional<Sha256Digest> proof = DecodeDigest(proof_b64);
  if (!proof) return ScramStatus::kMalformed;

  const ScramSecret& secret = secret_ != nullptr ? *secret_ : mock_;
  std::string_view without_proof =
      client_final.substr(0, client_final.size() - fields.back().size() - 1);
  std::string auth_message =
      client_first_bare_ + "," + server_first_ + "," + std::string(without_proof);
  Sha256Digest client_signature = HmacSha256(AsView(secret.stored_key), auth_message);
  Sha256Digest client_key = Xor(*proof, client_signature);
  bool ok = ConstantTimeEquals(AsView(Sha256(AsView(client_key))), AsView(secret.stored_key));
  if (!ok || secret_ == nullptr) return ScramStatus::kAuthFailed;

  *server_final = "v=" + Base64Encode(AsView(HmacSha256(AsView(secret.server_key), auth_message)));
  return ScramStatus::kOk;
}

// --- Client ---------------------------------------------------------------------------------

ScramClient::ScramClient(std::string password, std::string client_nonce, std::string user)
    : password_(std::move(password)),
      client_nonce_(std::move(client_nonce)),
      user_(std::move(user)) {
  if (client_nonce_.empty()) client_nonce_ = NewNonce();
}

void ScramClient::SetChannelBinding(bool server_offers_plus, std::string end_point_hash) {
  plus_ = server_offers_plus && !end_point_hash.empty();
  gs2_header_ = plus_ ? "p=" + std::string(kChannelBindingType) + ",," : "y,,";
  cbind_data_ = plus_ ? std::move(end_point_hash) : std::string();
}

std::string ScramClient::ClientFirst() {
  client_first_bare_ = "n=" + EscapeSaslName(user_) + ",r=" + client_nonce_;
  step_ = Step::kServerFirst;
  return gs2_header_ + client_first_bare_;
}

ScramStatus ScramClient::HandleServerFirst(std::string_view server_first,
                                           std::string* client_final) {
  if (std::exchange(step_, Step::kDone) != Step::kServerFirst) return ScramStatus::kMalformed;

  // r=<client nonce + server nonce>,s=<b64 salt>,i=<iterations>
  std::vector<std::string_view> fields = SplitFields(server_first);
  std::string_view nonce, salt_b64, iterations_text;
  if (fields.size() != 3 || !ReadAttr(fields[0], 'r', &nonce) ||
      !ReadAttr(fields[1], 's', &salt_b64) || !ReadAttr(fields[2], 'i', &iterations_text)) {
    return ScramStatus::kMalformed;
  }
  if (!IsValidNonce(nonce) || nonce.size() <= client_nonce_.size() ||
      !nonce.starts_with(client_nonce_)) {
    return ScramStatus::kMalformed;
  }
  std::optional<std::string> salt = Base64Decode(salt_b64);
  std::optional<int> iterations = ParsePositiveInt(iterations_text);
  if (!salt || salt->empty() || !iterations) return ScramStatus::kMalformed;

  Sha256Digest salted = SaltedPassword(password_, *salt, *iterations);
  Sha256Digest client_key = HmacSha256(AsView(salted), "Client Key");
  Sha256Digest stored_key = Sha256(AsView(client_key));
  Sha256Digest server_key = HmacSha256(AsView(salted), "Server Key");

  std::string without_proof =
      "c=" + Base64Encode(gs2_header_ + cbind_data_) + ",r=" + std::string(nonce);
  std::string auth_message =
      client_first_bare_ + "," + std::string(server_first) + "," + without_proof;
  Sha256Digest proof = Xor(client_key, HmacSha256(AsView(stored_key), auth_message));
  server_signature_ = HmacSha256(AsView(server_key), auth_message);
  *client_final = without_proof + ",p=" + Base64Encode(AsView(proof));
  step_ = Step::kServerFinal;
  return ScramStatus::kOk;
}

ScramStatus ScramClient::VerifyServerFinal(std::string_view server_final) {
  if (std::exchange(step_, Step::kDone) != Step::kServerFinal) return ScramStatus::kMalformed;
  std::string_view value;
  if (ReadAttr(server_final, 'e', &value)) return ScramStatus::kAuthFailed;  // server error
  if (!ReadAttr(server_final, 'v', &value)) return ScramStatus::kMalformed;
  std::optional<Sha256Digest> signature = DecodeDigest(value);  // rejects trailing ",..."
  if (!signature) return ScramStatus::kMalformed;
  return ConstantTimeEquals(AsView(*signature), AsView(server_signature_))
             ? ScramStatus::kOk
             : ScramStatus::kAuthFailed;
}

}  // namespace pgrelay::protocol
