// The users clients may log in as, with SCRAM secrets derived once at start-up (PBKDF2 is too
// slow to run per connection). Immutable after construction; share freely across workers.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>

#include "config/config.h"
#include "proxy/protocol/scram.h"

namespace pgrelay::proxy {

class AuthDirectory {
 public:
  struct User {
    std::string name;
    std::string password;
    protocol::ScramSecret scram;
  };

  explicit AuthDirectory(const config::Config& config);
  const User* Find(std::string_view name) const;

 private:
  std::unordered_map<std::string, User> users_;
};

}  // namespace pgrelay::proxy
