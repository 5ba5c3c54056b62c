// Small crypto helpers over OpenSSL (base64, hashes, HMAC, PBKDF2, random bytes).
// Stateless functions; thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgrelay::protocol {

using Sha256Digest = std::array<uint8_t, 32>;

std::string Base64Encode(std::string_view bytes);
std::optional<std::string> Base64Decode(std::string_view text);  // nullopt if malformed
std::string HexEncode(std::string_view bytes);                     // lowercase
Sha256Digest Sha256(std::string_view data);
Sha256Digest HmacSha256(std::string_view key, std::string_view data);
Sha256Digest Pbkdf2HmacSha256(std::string_view password, std::string_view salt, int iterations);
std::string Md5Hex(std::string_view data);    // 32 lowercase hex chars
std::string RandomBytes(size_t n);            // cryptographically secure
bool ConstantTimeEquals(std::string_view a, std::string_view b);
inline std::string_view AsView(const Sha256Digest& d) {
  return {reinterpret_cast<const char*>(d.data()), d.size()};
}

}  // namespace pgrelay::protocol
