#include "proxy/protocol/md5_auth.h"

#include "proxy/protocol/crypto_util.h"

namespace pgrelay::protocol {

std::string Md5StoredHash(std::string_view user, std::string_view password) {
  return "md5" + Md5Hex(std::string(password) + std::string(user));
}

std::string Md5Response(std::string_view user, std::string_view password, std::string_view salt) {
  return "md5" + Md5Hex(Md5Hex(std::string(password) + std::string(user)) + std::string(salt));
}

bool Md5Verify(std::string_view user, std::string_view password, std::string_view salt,
               std::string_view response) {
  return ConstantTimeEquals(Md5Response(user, password, salt), response);
}

}  // namespace pgrelay::protocol
