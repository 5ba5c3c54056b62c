// Loads and validates a YAML config file. Stateless functions; thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"

namespace pgrelay::config {

// One validation problem, naming the key path and the line in the file (1-based; 0 if unknown).
struct ConfigError {
  std::string key;  // e.g. "nodes[1].port"
  int line = 0;
  std::string message;
  std::string ToString() const;  // "line 12: nodes[1].port: must be between 1 and 65535"
};

struct LoadResult {
  std::shared_ptr<const Config> config;  // set iff errors is empty
  std::vector<ConfigError> errors;       // every problem found, in file order
  std::vector<std::string> warnings;     // valid, but worth telling the operator
  bool inline_passwords = false;         // some `password:` is written in the file itself
};

LoadResult LoadConfigFile(const std::string& path);
LoadResult LoadConfigString(const std::string& yaml);  // for tests; password_file paths as given

}  // namespace pgrelay::config
