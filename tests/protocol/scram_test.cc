#include "proxy/protocol/scram.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

namespace pgrelay::protocol {
namespace {

// RFC 7677 section 3 test vector.
constexpr char kRfcPassword[] = "pencil";
constexpr char kRfcClientNonce[] = "rOprNGfwEbeRWgbNEkqO";
constexpr char kRfcServerNonce[] = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr char kRfcSalt[] = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr char kRfcClientFirst[] = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr char kRfcServerFirst[] =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr char kRfcClientFinal[] =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr char kRfcServerFinal[] = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

ScramSecret RfcSecret() {
  return MakeScramSecret(kRfcPassword, Base64Decode(kRfcSalt).value(), 4096);
}

TEST(ScramTest, Rfc7677VectorClientSide) {
  ScramClient client(kRfcPassword, kRfcClientNonce, "user");
  EXPECT_EQ(client.ClientFirst(), kRfcClientFirst);
  std::string client_final;
  ASSERT_EQ(client.HandleServerFirst(kRfcServerFirst, &client_final), ScramStatus::kOk);
  EXPECT_EQ(client_final, kRfcClientFinal);
  EXPECT_EQ(client.VerifyServerFinal(kRfcServerFinal), ScramStatus::kOk);
}

TEST(ScramTest, Rfc7677VectorServerSide) {
  ScramSecret secret = RfcSecret();
  ScramServer server(&secret, kRfcServerNonce);
  std::string server_first, server_final;
  ASSERT_EQ(server.HandleClientFirst(kRfcClientFirst, &server_first), ScramStatus::kOk);
  EXPECT_EQ(server_first, kRfcServerFirst);
  ASSERT_EQ(server.HandleClientFinal(kRfcClientFinal, &server_final), ScramStatus::kOk);
  EXPECT_EQ(server_final, kRfcServerFinal);
}

TEST(ScramTest, ClientFirstLooksLikeLibpq) {
  ScramClient client("pw", "abc");
  EXPECT_EQ(client.ClientFirst(), "n,,n=,r=abc");
  ScramClient random_nonce("pw");
  std::string first = random_nonce.ClientFirst();
  ASSERT_TRUE(first.starts_with("n,,n=,r="));
  std::string nonce = first.substr(8);
  EXPECT_EQ(nonce.size(), 24u);  // base64 of 18 bytes
  EXPECT_EQ(Base64Decode(nonce).value().size(), 18u);
}

// Runs a whole exchange; returns the server's verdict (and the client's, when the server said ok).
ScramStatus Exchange(const ScramSecret* secret, const std::string& password) {
  ScramServer server(secret);
  ScramClient client(password);
  std::string server_first, client_final, server_final;
  EXPECT_EQ(server.HandleClientFirst(client.ClientFirst(), &server_first), ScramStatus::kOk);
  EXPECT_EQ(client.HandleServerFirst(server_first, &client_final), ScramStatus::kOk);
  ScramStatus status = server.HandleClientFinal(client_final, &server_final);
  if (status == ScramStatus::kOk) return client.VerifyServerFinal(server_final);
  return status;
}

TEST(ScramTest, RoundTripWithRandomNonces) {
  ScramSecret secret = MakeScramSecret("correct horse battery staple");
  EXPECT_EQ(secret.salt.size(), 16u);
  EXPECT_EQ(secret.iterations, kScramDefaultIterations);
  EXPECT_EQ(Exchange(&secret, "correct horse battery staple"), ScramStatus::kOk);
  EXPECT_EQ(Exchange(&secret, "correct horse battery staple"), ScramStatus::kOk);
}

TEST(ScramTest, WrongPasswordFails) {
  ScramSecret secret = MakeScramSecret("right", "0123456789abcdef", 1);
  EXPECT_EQ(Exchange(&secret, "wrong"), ScramStatus::kAuthFailed);
  EXPECT_EQ(Exchange(&secret, ""), ScramStatus::kAuthFailed);
}

TEST(ScramTest, MockExchangeFails) {
  EXPECT_EQ(Exchange(nullptr, "anything"), ScramStatus::kAuthFailed);
  EXPECT_EQ(Exchange(nullptr, ""), ScramStatus::kAuthFailed);
}

TEST(ScramTest, MockExchangeLooksReal) {
  ScramServer a(nullptr, "srv"), b(nullptr, "srv");
  std::string first_a, first_b;
  ASSERT_EQ(a.HandleClientFirst("n,,n=,r=cli", &first_a), ScramStatus::kOk);
  ASSERT_EQ(b.HandleClientFirst("n,,n=,r=cli", &first_b), ScramStatus::kOk);
  EXPECT_EQ(first_a, first_b);  // stable salt: repeated probes see the same answer
  ASSERT_TRUE(first_a.starts_with("r=clisrv,s="));
  ASSERT_TRUE(first_a.ends_with(",i=4096"));
  std::string salt_b64 = first_a.substr(11, first_a.size() - 11 - 7);
  EXPECT_EQ(Base64Decode(salt_b64).value().size(), 16u);
}

TEST(ScramTest, ChannelBindingFlagY) {
  ScramSecret secret = RfcSecret();
  ScramServer server(&secret, "srv");
  std::string server_first, server_final;
  ASSERT_EQ(server.HandleClientFirst("y,,n=,r=cli", &server_first), ScramStatus::kOk);
  // "c=biws" does not match the "y,," header the client sent.
  EXPECT_EQ(server.HandleClientFinal("c=biws,r=clisrv,p=" + Base64Encode(std::string(32, 'x')),
                                     &server_final),
            ScramStatus::kMalformed);

  ScramServer server2(&secret, "srv");
  ASSERT_EQ(server2.HandleClientFirst("y,,n=,r=cli", &server_first), ScramStatus::kOk);
  EXPECT_EQ(server2.HandleClientFinal("c=eSws,r=clisrv,p=" + Base64Encode(std::string(32, 'x')),
                                      &server_final),
            ScramStatus::kAuthFailed);
}

// The client-final-message of a client that binds to `cbind_data` with gs2 header `gs2`,
// computed here from the RFC 5802 definitions (ScramClient itself never binds).
std::string BoundClientFinal(const std::string& gs2, const std::string& cbind_data,
                             const std::string& client_first_bare,
                             const std::string& server_first) {
  const std::string nonce = server_first.substr(2, server_first.find(',') - 2);
  const std::string without_proof = "c=" + Base64Encode(gs2 + cbind_data) + ",r=" + nonce;
  const Sha256Digest salted = Pbkdf2HmacSha256(kRfcPassword, Base64Decode(kRfcSalt).value(), 4096);
  const Sha256Digest client_key = HmacSha256(AsView(salted), "Client Key");
  const Sha256Digest stored_key = Sha256(AsView(client_key));
  const std::string auth_message = client_first_bare + "," + server_first + "," + without_proof;
  const Sha256Digest signature = HmacSha256(AsView(stored_key), auth_message);
  Sha256Digest proof;
  for (size_t i = 0; i < proof.size(); ++i) proof[i] = client_key[i] ^ signature[i];
  return without_proof + ",p=" + Base64Encode(AsView(proof));
}

TEST(ScramTest, ChannelBindingPlus) {
  const ScramSecret secret = RfcSecret();
  const std::string hash(32, '\x42');  // the certificate's tls-server-end-point hash
  const std::string gs2 = "p=tls-server-end-point,,";
  std::string first, final_message;
  {
    ScramServer server(&secret, "srv");
    server.SetChannelBinding(/*plus=*/true, hash);
    ASSERT_EQ(server.HandleClientFirst(gs2 + "n=,r=cli", &first), ScramStatus::kOk);
    EXPECT_EQ(
        server.HandleClientFinal(BoundClientFinal(gs2, hash, "n=,r=cli", first), &final_message),
        ScramStatus::kOk);
  }
  {  // bound to another certificate (a man in the middle terminating TLS): refused
    ScramServer server(&secret, "srv");
    server.SetChannelBinding(true, hash);
    ASSERT_EQ(server.HandleClientFirst(gs2 + "n=,r=cli", &first), ScramStatus::kOk);
    EXPECT_EQ(
        server.HandleClientFinal(BoundClientFinal(gs2, std::string(32, '\x43'), "n=,r=cli", first),
                                 &final_message),
        ScramStatus::kMalformed);
  }
  {  // PLUS chosen, but the client does not bind
    ScramServer server(&secret, "srv");
    server.SetChannelBinding(true, hash);
    EXPECT_EQ(server.HandleClientFirst("n,,n=,r=cli", &first), ScramStatus::kMalformed);
  }
  {  // PLUS with an unsupported binding type
    ScramServer server(&secret, "srv");
    server.SetChannelBinding(true, hash);
    EXPECT_EQ(server.HandleClientFirst("p=tls-unique,,n=,r=cli", &first), ScramStatus::kMalformed);
  }
  {  // over TLS, plain SCRAM-SHA-256 without binding is fine...
    ScramServer server(&secret, "srv");
    server.SetChannelBinding(false, hash);
    ASSERT_EQ(server.HandleClientFirst("n,,n=,r=cli", &first), ScramStatus::kOk);
    EXPECT_EQ(
        server.HandleClientFinal(BoundClientFinal("n,,", "", "n=,r=cli", first), &final_message),
        ScramStatus::kOk);
  }
  {  // ...but "y" (client thinks the server cannot bind although PLUS was offered) is a downgrade
    ScramServer server(&secret, "srv");
    server.SetChannelBinding(false, hash);
    EXPECT_EQ(server.HandleClientFirst("y,,n=,r=cli", &first), ScramStatus::kMalformed);
  }
  {  // and binding without choosing PLUS is refused
    ScramServer server(&secret, "srv");
    server.SetChannelBinding(false, hash);
    EXPECT_EQ(server.HandleClientFirst(gs2 + "n=,r=cli", &first), ScramStatus::kMalformed);
  }
}

TEST(ScramTest, ClientAndServerBindToTheSameCertificate) {
  const ScramSecret secret = MakeScramSecret("pw");
  const std::string hash(32, '\x07');
  for (bool plus : {true, false}) {
    ScramClient client("pw");
    client.SetChannelBinding(plus, hash);
    EXPECT_EQ(client.mechanism(), plus ? kScramPlusMechanism : kScramMechanism);
    ScramServer server(&secret);
    // plus: a TLS server offering PLUS; else a server that did not offer it ("y" is fine then).
    if (plus) server.SetChannelBinding(true, hash);
    std::string first, final_message, server_final;
    const std::string client_first = client.ClientFirst();
    EXPECT_EQ(client_first.substr(0, 3), plus ? "p=t" : "y,,");
    ASSERT_EQ(server.HandleClientFirst(client_first, &first), ScramStatus::kOk);
    ASSERT_EQ(client.HandleServerFirst(first, &final_message), ScramStatus::kOk);
    ASSERT_EQ(server.HandleClientFinal(final_message, &server_final), ScramStatus::kOk) << plus;
    EXPECT_EQ(client.VerifyServerFinal(server_final), ScramStatus::kOk);
  }
  // A server that terminates TLS with another certificate sees a binding it cannot match.
  ScramClient client("pw");
  client.SetChannelBinding(true, hash);
  ScramServer server(&secret);
  server.SetChannelBinding(true, std::string(32, '\x08'));
  std::string first, final_message, server_final;
  ASSERT_EQ(server.HandleClientFirst(client.ClientFirst(), &first), ScramStatus::kOk);
  ASSERT_EQ(client.HandleServerFirst(first, &final_message), ScramStatus::kOk);
  EXPECT_EQ(server.HandleClientFinal(final_message, &server_final), ScramStatus::kMalformed);
}

TEST(ScramTest, SaltedPasswordIsCachedPerPasswordSaltAndIterations) {
  const std::string salt = Base64Decode(kRfcSalt).value();
  const Sha256Digest expected = Pbkdf2HmacSha256(kRfcPassword, salt, 4096);
  EXPECT_EQ(SaltedPassword(kRfcPassword, salt, 4096), expected);
  EXPECT_EQ(SaltedPassword(kRfcPassword, salt, 4096), expected);  // from the cache
  // Any other input derives its own key.
  EXPECT_EQ(SaltedPassword("other", salt, 4096), Pbkdf2HmacSha256("other", salt, 4096));
  EXPECT_EQ(SaltedPassword(kRfcPassword, "salt2", 4096),
            Pbkdf2HmacSha256(kRfcPassword, "salt2", 4096));
  EXPECT_EQ(SaltedPassword(kRfcPassword, salt, 4097), Pbkdf2HmacSha256(kRfcPassword, salt, 4097));
  EXPECT_NE(SaltedPassword(kRfcPassword, salt, 4097), expected);
}

TEST(ScramTest, ServerRejectsMalformedClientFirst) {
  ScramSecret secret = RfcSecret();
  const std::string kBad[] = {
      "",
      "n",
      "n,",
      "n,,",
      "p=tls-server-end-point,,n=,r=abc",  // channel binding not offered
      "x,,n=,r=abc",
      "n,a=admin,n=,r=abc",  // authzid unsupported
      "n,,m=ext,n=,r=abc",   // mandatory extension
      "n,,n=,r=",            // empty nonce
      "n,,n=,r=a,b",         // bad extension
      "n,,n=,r=ab c",        // non-printable nonce
      "n,,r=abc",            // no user attribute
      "n,,n=,s=abc",
      "n,,n=,r=abc,",
      std::string(1 << 20, 'A'),
      "n,,n=,r=" + std::string(1 << 20, ','),
  };
  for (const std::string& msg : kBad) {
    ScramServer server(&secret, "srv");
    std::string out;
    EXPECT_EQ(server.HandleClientFirst(msg, &out), ScramStatus::kMalformed) << msg.substr(0, 40);
  }
}

TEST(ScramTest, ServerRejectsMalformedClientFinal) {
  ScramSecret secret = RfcSecret();
  std::string proof = Base64Encode(std::string(32, 'x'));
  const std::string kBad[] = {
      "",
      "c=biws",
      "c=biws,r=clisrv",
      "c=biws,r=clisrv,p=",
      "c=biws,r=clisrv,p=!!!!",
      "c=biws,r=clisrv,p=" + Base64Encode(std::string(31, 'x')),  // wrong proof length
      "c=biws,r=clisrvX,p=" + proof,                              // wrong nonce
      "c=biws,r=cli,p=" + proof,                                  // client nonce only
      "c=eSws,r=clisrv,p=" + proof,                               // binding mismatch
      "r=clisrv,c=biws,p=" + proof,                               // wrong order
      "c=biws,r=clisrv,p=" + proof + ",x=1",                      // proof not last
      "c=biws,r=clisrv,m=1,p=" + proof,                           // reserved m=
      "c=biws,r=clisrv,,p=" + proof,                              // empty field
  };
  for (const std::string& msg : kBad) {
    ScramServer server(&secret, "srv");
    std::string first, out;
    ASSERT_EQ(server.HandleClientFirst("n,,n=,r=cli", &first), ScramStatus::kOk);
    EXPECT_EQ(server.HandleClientFinal(msg, &out), ScramStatus::kMalformed) << msg;
  }
}

TEST(ScramTest, ServerEnforcesMessageOrder) {
  ScramSecret secret = RfcSecret();
  ScramServer server(&secret, kRfcServerNonce);
  std::string out;
  EXPECT_EQ(server.HandleClientFinal(kRfcClientFinal, &out), ScramStatus::kMalformed);

  ScramServer replay(&secret, kRfcServerNonce);
  ASSERT_EQ(replay.HandleClientFirst(kRfcClientFirst, &out), ScramStatus::kOk);
  EXPECT_EQ(replay.HandleClientFirst(kRfcClientFirst, &out), ScramStatus::kMalformed);
  // The failed second client-first ended the exchange.
  EXPECT_EQ(replay.HandleClientFinal(kRfcClientFinal, &out), ScramStatus::kMalformed);

  ScramServer twice(&secret, kRfcServerNonce);
  ASSERT_EQ(twice.HandleClientFirst(kRfcClientFirst, &out), ScramStatus::kOk);
  ASSERT_EQ(twice.HandleClientFinal(kRfcClientFinal, &out), ScramStatus::kOk);
  EXPECT_EQ(twice.HandleClientFinal(kRfcClientFinal, &out), ScramStatus::kMalformed);
}

TEST(ScramTest, ServerAcceptsExtensionsBeforeProof) {
  // Extensions are part of AuthMessage, so build a matching proof by hand.
  ScramSecret secret = MakeScramSecret("pw", "saltsalt", 1);
  ScramServer server(&secret, "srv");
  std::string first, final_msg;
  ASSERT_EQ(server.HandleClientFirst("n,,n=someone,r=cli,x=ext", &first), ScramStatus::kOk);
  Sha256Digest salted = Pbkdf2HmacSha256("pw", "saltsalt", 1);
  Sha256Digest client_key = HmacSha256(AsView(salted), "Client Key");
  std::string without_proof = "c=biws,r=clisrv,y=ext";
  std::string auth = "n=someone,r=cli,x=ext," + first + "," + without_proof;
  Sha256Digest sig = HmacSha256(AsView(Sha256(AsView(client_key))), auth);
  std::string proof(32, '\0');
  for (size_t i = 0; i < 32; ++i) proof[i] = static_cast<char>(client_key[i] ^ sig[i]);
  ASSERT_EQ(server.HandleClientFinal(without_proof + ",p=" + Base64Encode(proof), &final_msg),
            ScramStatus::kOk);
  EXPECT_EQ(final_msg, "v=" + Base64Encode(AsView(HmacSha256(AsView(secret.server_key), auth))));
}

TEST(ScramTest, ClientRejectsBadServerFirst) {
  const std::string kBad[] = {
      "",
      "r=abc",                       // missing attributes
      "r=xyzsrv,s=c2FsdA==,i=4096",  // nonce not extending the client's
      "r=abc,s=c2FsdA==,i=4096",     // nonce not extended
      "r=abcsrv,s=!!!,i=4096",       // bad salt
      "r=abcsrv,s=,i=4096",          // empty salt
      "r=abcsrv,s=c2FsdA==,i=0",     // iterations < 1
      "r=abcsrv,s=c2FsdA==,i=-1",
      "r=abcsrv,s=c2FsdA==,i=+5",
      "r=abcsrv,s=c2FsdA==,i=99999999999999999999",  // overflow
      "r=abcsrv,s=c2FsdA==,i=12x",
      "m=ext,r=abcsrv,s=c2FsdA==,i=1",
      "r=abcsrv,s=c2FsdA==,i=1,x=garbage",
      "e=other-error",
  };
  for (const std::string& msg : kBad) {
    ScramClient client("pw", "abc");
    client.ClientFirst();
    std::string out;
    EXPECT_EQ(client.HandleServerFirst(msg, &out), ScramStatus::kMalformed) << msg;
  }
  ScramClient early("pw", "abc");
  std::string out;
  EXPECT_EQ(early.HandleServerFirst("r=abcsrv,s=c2FsdA==,i=1", &out), ScramStatus::kMalformed);
}

TEST(ScramTest, ClientVerifiesServerFinal) {
  auto client_after_first = [] {
    auto client = std::make_unique<ScramClient>(kRfcPassword, kRfcClientNonce, "user");
    client->ClientFirst();
    std::string out;
    EXPECT_EQ(client->HandleServerFirst(kRfcServerFirst, &out), ScramStatus::kOk);
    return client;
  };
  EXPECT_EQ(client_after_first()->VerifyServerFinal("e=invalid-proof"), ScramStatus::kAuthFailed);
  EXPECT_EQ(client_after_first()->VerifyServerFinal("v=" + Base64Encode(std::string(32, 'x'))),
            ScramStatus::kAuthFailed);
  EXPECT_EQ(client_after_first()->VerifyServerFinal(""), ScramStatus::kMalformed);
  EXPECT_EQ(client_after_first()->VerifyServerFinal("v=!!"), ScramStatus::kMalformed);
  EXPECT_EQ(client_after_first()->VerifyServerFinal(std::string(kRfcServerFinal) + ",x=1"),
            ScramStatus::kMalformed);
  auto client = client_after_first();
  EXPECT_EQ(client->VerifyServerFinal(kRfcServerFinal), ScramStatus::kOk);
  EXPECT_EQ(client->VerifyServerFinal(kRfcServerFinal), ScramStatus::kMalformed);  // done
}

// Derived independently with Python hashlib/hmac/base64 (password "pencil",
// salt b"0123456789abcdef", 4096 iterations):
//   sp = hashlib.pbkdf2_hmac('sha256', b'pencil', salt, 4096)
//   ck = hmac.new(sp, b'Client Key', 'sha256').digest(); stored = hashlib.sha256(ck).digest()
//   server = hmac.new(sp, b'Server Key', 'sha256').digest()
constexpr char kPgSecret[] =
    "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"
    "nQpbZ77WudtqufPwikHXGRt6g2QJ4zns8bZLw273DRM=:jn2amWP1q1h+jgjy0YTO14S6/F02SV7taipOeB7ef20=";

TEST(ScramTest, PostgresSecretParsesAndRoundTrips) {
  std::optional<ScramSecret> parsed = ParseScramSecret(kPgSecret);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->salt, "0123456789abcdef");
  EXPECT_EQ(parsed->iterations, 4096);
  ScramSecret made = MakeScramSecret("pencil", "0123456789abcdef", 4096);
  EXPECT_EQ(parsed->stored_key, made.stored_key);
  EXPECT_EQ(parsed->server_key, made.server_key);
  EXPECT_EQ(FormatScramSecret(*parsed), kPgSecret);
  EXPECT_EQ(FormatScramSecret(made), kPgSecret);
  EXPECT_EQ(Exchange(&*parsed, "pencil"), ScramStatus::kOk);
  EXPECT_EQ(Exchange(&*parsed, "pencil!"), ScramStatus::kAuthFailed);

  ScramSecret random = MakeScramSecret("x");
  std::optional<ScramSecret> again = ParseScramSecret(FormatScramSecret(random));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->salt, random.salt);
  EXPECT_EQ(again->stored_key, random.stored_key);
}

TEST(ScramTest, ParseScramSecretRejectsMalformed) {
  const std::string kKey = Base64Encode(std::string(32, 'k'));
  const std::string kBad[] = {
      "",
      "md53175bce1d3201d16594cebf9d7eb3f9d",
      "SCRAM-SHA-256$",
      "SCRAM-SHA-1$4096:c2FsdA==$" + kKey + ":" + kKey,
      "SCRAM-SHA-256$0:c2FsdA==$" + kKey + ":" + kKey,
      "SCRAM-SHA-256$-1:c2FsdA==$" + kKey + ":" + kKey,
      "SCRAM-SHA-256$x:c2FsdA==$" + kKey + ":" + kKey,
      "SCRAM-SHA-256$4096:$" + kKey + ":" + kKey,
      "SCRAM-SHA-256$4096:!!!!$" + kKey + ":" + kKey,
      "SCRAM-SHA-256$4096:c2FsdA==$" + kKey,
      "SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:" + kKey,
      "SCRAM-SHA-256$4096:c2FsdA==$" + kKey + ":" + kKey + ":" + kKey,
      "SCRAM-SHA-256$4096c2FsdA==$" + kKey + ":" + kKey,
  };
  for (const std::string& text : kBad) EXPECT_FALSE(ParseScramSecret(text).has_value()) << text;
  EXPECT_TRUE(ParseScramSecret("SCRAM-SHA-256$1:c2FsdA==$" + kKey + ":" + kKey).has_value());
}

// Mutates `msg` with a few random edits drawn from SCRAM-ish bytes and plain noise.
std::string Mutate(std::string msg, std::mt19937& rng) {
  static const std::string kAlphabet = "nyprcsivme=,+/0123456789abcXYZ$% \x01\xff";
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  int edits = 1 + static_cast<int>(pick(4));
  for (int e = 0; e < edits; ++e) {
    switch (pick(7)) {
      case 0:  // flip a byte
        if (!msg.empty()) msg[pick(msg.size())] ^= static_cast<char>(1 + pick(255));
        break;
      case 1:  // insert a byte
        msg.insert(msg.begin() + static_cast<long>(pick(msg.size() + 1)),
                   kAlphabet[pick(kAlphabet.size())]);
        break;
      case 2:  // delete a byte
        if (!msg.empty()) msg.erase(pick(msg.size()), 1);
        break;
      case 3:  // truncate
        msg.resize(pick(msg.size() + 1));
        break;
      case 4:  // duplicate a span
        if (!msg.empty()) {
          size_t at = pick(msg.size());
          msg.insert(at, msg.substr(at, pick(msg.size() - at) + 1));
        }
        break;
      case 5:  // replace a byte with a SCRAM-significant one
        if (!msg.empty()) msg[pick(msg.size())] = kAlphabet[pick(kAlphabet.size())];
        break;
      default:  // random garbage
        msg = RandomBytes(pick(200));
        break;
    }
  }
  return msg;
}

TEST(ScramTest, RandomizedClientMessagesNeverCrashOrPassWithBadProof) {
  ScramSecret secret = RfcSecret();
  std::mt19937 rng(20240607);
  int ok = 0, malformed = 0, failed = 0;
  for (int i = 0; i < 20000; ++i) {
    bool mock = i % 5 == 0;
    ScramServer server(mock ? nullptr : &secret, kRfcServerNonce);
    int mode = i % 4;  // 0: mutate first, 1: mutate final, 2: both, 3: random valid-looking proof
    std::string first = kRfcClientFirst, final_msg = kRfcClientFinal;
    if (mode == 0 || mode == 2) first = Mutate(first, rng);
    if (mode == 1 || mode == 2) final_msg = Mutate(final_msg, rng);
    if (mode == 3) {
      final_msg = std::string(kRfcClientFinal).substr(0, std::string(kRfcClientFinal).find(",p=")) +
                  ",p=" + Base64Encode(RandomBytes(32));
    }
    std::string server_first, server_final;
    ScramStatus s1 = server.HandleClientFirst(first, &server_first);
    if (s1 != ScramStatus::kOk) {
      ASSERT_EQ(s1, ScramStatus::kMalformed);
      ++malformed;
      continue;
    }
    ScramStatus s2 = server.HandleClientFinal(final_msg, &server_final);
    if (s2 == ScramStatus::kOk) {
      // Only the untouched, correctly proven exchange may succeed.
      ASSERT_FALSE(mock);
      ASSERT_EQ(first, kRfcClientFirst);
      ASSERT_EQ(final_msg, kRfcClientFinal);
      ASSERT_EQ(server_final, kRfcServerFinal);
      ++ok;
    } else {
      (s2 == ScramStatus::kMalformed ? malformed : failed)++;
    }
  }
  EXPECT_GT(malformed, 0);
  EXPECT_GT(failed, 1000);  // mode 3 alone yields ~5000 bad proofs
}

TEST(ScramTest, RandomizedServerMessagesNeverCrashClient) {
  std::mt19937 rng(7);
  // i=1 keeps PBKDF2 cheap; mutations can only grow it by a few digits.
  const std::string kServerFirst = "r=abcsrv,s=c2FsdA==,i=1";
  for (int i = 0; i < 2000; ++i) {
    ScramClient client("pw", "abc");
    client.ClientFirst();
    std::string msg = Mutate(kServerFirst, rng), client_final;
    if (client.HandleServerFirst(msg, &client_final) != ScramStatus::kOk) continue;
    ASSERT_TRUE(msg.starts_with("r=abc"));
    std::string server_final = Mutate("v=" + Base64Encode(std::string(32, 's')), rng);
    ASSERT_NE(client.VerifyServerFinal(server_final), ScramStatus::kOk);
  }
}

}  // namespace
}  // namespace pgrelay::protocol
