#include "proxy/auth_directory.h"

namespace pgrelay::proxy {

AuthDirectory::AuthDirectory(const config::Config& config) {
  for (const auto& u : config.users) {
    // A password given as a PostgreSQL SCRAM verifier is used as is.
    auto parsed = protocol::ParseScramSecret(u.password);
    users_[u.name] =
        User{u.name, u.password, parsed ? *parsed : protocol::MakeScramSecret(u.password)};
  }
}

const AuthDirectory::User* AuthDirectory::Find(std::string_view name) const {
  auto it = users_.find(std::string(name));
  return it == users_.end() ? nullptr : &it->second;
}

}  // namespace pgrelay::proxy
