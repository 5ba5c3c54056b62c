#include "proxy/protocol/crypto_util.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace pgrelay::protocol {
namespace {

// OpenSSL failures here mean the library is broken or out of memory: a bug, not bad input.
void Check(int ok, const char* what) {
  if (ok != 1) throw std::runtime_error(std::string("OpenSSL failure: ") + what);
}

// OpenSSL may reject a null pointer even with length 0; empty views can have data() == nullptr.
const unsigned char* Bytes(std::string_view s) {
  static const unsigned char kEmpty = 0;
  return s.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(s.data());
}

int Base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

std::string Base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');  // EVP_EncodeBlock adds a NUL
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), Bytes(bytes),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// Strict RFC 4648 decoding: padded, no whitespace, canonical (unused bits zero).
std::optional<std::string> Base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = text[text.size() - 2] == '=' ? 2 : 1;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  for (size_t i = 0; i < text.size() - pad; ++i) {
    int v = Base64Value(text[i]);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    if (i % 4 == 3) {
      out.push_back(static_cast<char>(acc >> 16));
      out.push_back(static_cast<char>(acc >> 8));
      out.push_back(static_cast<char>(acc));
      acc = 0;
    }
  }
  if (pad == 1) {  // 3 symbols = 18 bits -> 2 bytes, low 2 bits unused
    if (acc & 0x3) return std::nullopt;
    out.push_back(static_cast<char>(acc >> 10));
    out.push_back(static_cast<char>(acc >> 2));
  } else if (pad == 2) {  // 2 symbols = 12 bits -> 1 byte, low 4 bits unused
    if (acc & 0xf) return std::nullopt;
    out.push_back(static_cast<char>(acc >> 4));
  }
  return out;
}

std::string HexEncode(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  }
  return out;
}

Sha256Digest Sha256(std::string_view data) {
  Sha256Digest d;
  Check(EVP_Digest(Bytes(data), data.size(), d.data(), nullptr, EVP_sha256(), nullptr), "sha256");
  return d;
}

Sha256Digest HmacSha256(std::string_view key, std::string_view data) {
  Sha256Digest d;
  unsigned int len = 0;
  bool ok = HMAC(EVP_sha256(), Bytes(key), static_cast<int>(key.size()), Bytes(data), data.size(),
                 d.data(), &len) != nullptr;
  Check(ok && len == d.size() ? 1 : 0, "hmac-sha256");
  return d;
}

Sha256Digest Pbkdf2HmacSha256(std::string_view password, std::string_view salt, int iterations) {
  if (iterations < 1) throw std::invalid_argument("PBKDF2 iterations must be >= 1");
  Sha256Digest d;
  Check(
      PKCS5_PBKDF2_HMAC(password.empty() ? "" : password.data(), static_cast<int>(password.size()),
                        Bytes(salt), static_cast<int>(salt.size()), iterations, EVP_sha256(),
                        static_cast<int>(d.size()), d.data()),
      "pbkdf2");
  return d;
}

std::string Md5Hex(std::string_view data) {
  unsigned char d[16];
  Check(EVP_Digest(Bytes(data), data.size(), d, nullptr, EVP_md5(), nullptr), "md5");
  return HexEncode({reinterpret_cast<const char*>(d), sizeof(d)});
}

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  if (n > 0) {
    Check(RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)),
          "RAND_bytes");
  }
  return out;
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Lengths are public (digests, fixed formats); only the contents are compared in constant time.
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(Bytes(a), Bytes(b), a.size()) == 0;
}

}  // namespace pgrelay::protocol
