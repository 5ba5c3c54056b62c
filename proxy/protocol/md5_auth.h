// PostgreSQL's md5 password authentication. Stateless functions; thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace pgrelay::protocol {

// "md5" + md5hex(password + user): what pg_authid stores for md5.
std::string Md5StoredHash(std::string_view user, std::string_view password);
// The client's response to AuthenticationMD5Password with a 4-byte salt:
// "md5" + md5hex(md5hex(password + user) + salt).
std::string Md5Response(std::string_view user, std::string_view password, std::string_view salt);
// Checks a client's response in constant time.
bool Md5Verify(std::string_view user, std::string_view password, std::string_view salt,
               std::string_view response);

}  // namespace pgrelay::protocol
