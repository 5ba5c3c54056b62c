#include "config/config.h"

namespace pgrelay::config {

std::string Endpoint::ToString() const {
  // IPv6 literals need brackets so the port separator stays unambiguous.
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string_view ToString(AuthMethod m) {
  switch (m) {
    case AuthMethod::kScramSha256:
      return "scram-sha-256";
    case AuthMethod::kMd5:
      return "md5";
    case AuthMethod::kTrust:
      return "trust";
  }
  return "unknown";
}

std::string_view ToString(Strategy s) {
  switch (s) {
    case Strategy::kLeader:
      return "leader";
    case Strategy::kFollower:
      return "follower";
    case Strategy::kReadYourWrites:
      return "read-your-writes";
    case Strategy::kQuorum:
      return "quorum";
  }
  return "unknown";
}

std::string_view ToString(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "unknown";
}

const UserConfig* Config::FindUser(std::string_view name) const {
  for (const UserConfig& user : users) {
    if (user.name == name) return &user;
  }
  return nullptr;
}

BackendCredentials Config::MonitorCredentials() const {
  if (backend) return *backend;
  if (!users.empty()) return {users.front().name, users.front().password};
  return {};
}

}  // namespace pgrelay::config
