#include "config/config_loader.h"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <boost/regex.hpp>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

namespace pgrelay::config {
namespace {

using std::chrono::milliseconds;

constexpr size_t kMaxConfigFileSize = 16 << 20;
constexpr size_t kMaxPasswordFileSize = 64 << 10;
constexpr uint64_t kMaxDurationMs = 24 * 3600 * 1000;  // 24h
constexpr uint64_t kMinMessageSize = 1 << 10;          // 1kB
constexpr uint64_t kMaxMessageSize = 1 << 30;          // 1GB
constexpr int64_t kMaxClassifierCacheSize = 10'000'000;
constexpr std::string_view kPasswordKeys = "password, password_env or password_file";
constexpr std::string_view kEndpointForm =
    "host:port with a port from 1 to 65535, e.g. 127.0.0.1:6432 or [::1]:6432";
constexpr std::string_view kDurationForm =
    "a duration: an integer with unit ms, s, min or h (a bare integer means ms), "
    "e.g. 500ms, 10s, 2min";
constexpr std::string_view kSizeForm =
    "a size: an integer number of bytes, or with unit B, kB, KB, MB or GB (1024-based), "
    "e.g. 64MB";

struct Unit {
  std::string_view name;
  uint64_t factor;
};
constexpr Unit kDurationUnits[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"min", 60'000}, {"h", 3'600'000}};
constexpr Unit kSizeUnits[] = {{"", 1},         {"B", 1},        {"kB", 1 << 10},
                               {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}};

// 1-based line of a node, or 0 if yaml-cpp does not know it.
int LineOf(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.line >= 0 ? mark.line + 1 : 0;
}

std::string KindOf(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// Quotes a (non-secret) value for an error message, shortening long ones.
std::string Quote(std::string_view value) {
  constexpr size_t kMaxShown = 40;
  if (value.size() > kMaxShown) return "'" + std::string(value.substr(0, kMaxShown)) + "...'";
  return "'" + std::string(value) + "'";
}

// Reads a whole file of at most max_size bytes; on failure returns false and sets *error.
bool ReadFile(const std::string& path, size_t max_size, std::string* contents, std::string* error) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    *error = std::generic_category().message(errno);
    return false;
  }
  contents->clear();
  char buffer[4096];
  size_t n;
  while (contents->size() <= max_size && (n = std::fread(buffer, 1, sizeof buffer, file)) > 0) {
    contents->append(buffer, n);
  }
  const int read_errno = std::ferror(file) ? errno : 0;
  std::fclose(file);
  if (read_errno != 0) {
    *error = std::generic_category().message(read_errno);
    return false;
  }
  if (contents->size() > max_size) {
    *error = "file is larger than " + std::to_string(max_size) + " bytes";
    return false;
  }
  return true;
}

// Parses a plain decimal integer with an optional '-'. Saturates on overflow so that range
// checks reject it.
std::optional<int64_t> ParseInt(std::string_view text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ptr != end || ec == std::errc::invalid_argument) return std::nullopt;
  if (ec == std::errc::result_out_of_range) {
    return text.starts_with('-') ? std::numeric_limits<int64_t>::min()
                                 : std::numeric_limits<int64_t>::max();
  }
  return value;
}

// Parses "<digits>[ ]<unit>" (e.g. "64MB") into digits * unit factor; nullopt if malformed.
// Saturates on overflow so that range checks reject it.
std::optional<uint64_t> ParseWithUnit(std::string_view text, std::span<const Unit> units) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  uint64_t number = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ptr == text.data()) return std::nullopt;
  if (ec == std::errc::result_out_of_range) number = kMax;
  std::string_view unit = text.substr(ptr - text.data());
  while (unit.starts_with(' ')) unit.remove_prefix(1);
  for (const Unit& u : units) {
    if (u.name == unit) return number > kMax / u.factor ? kMax : number * u.factor;
  }
  return std::nullopt;
}

// "host:port" or "[ipv6]:port"; nullopt if malformed or the port is outside 1..65535.
std::optional<Endpoint> ParseEndpoint(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || text.substr(close + 1, 1) != ":") return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 needs brackets
  }
  const std::optional<int64_t> number = ParseInt(port);
  if (host.empty() || !number || *number < 1 || *number > 65535) return std::nullopt;
  return Endpoint{std::string(host), static_cast<uint16_t>(*number)};
}

template <typename T, typename U>
void Set(const std::optional<U>& value, T* out) {
  if (value) *out = static_cast<T>(*value);
}

// One pass over the YAML tree. Every Read* method reports its own errors and leaves the default
// in place on failure, so one bad key never hides the others.
class Loader {
 public:
  explicit Loader(std::filesystem::path base_dir) : base_dir_(std::move(base_dir)) {}

  LoadResult Load(const std::string& yaml);

 private:
  // A key/value pair of a map, with the key's path and line.
  struct Entry {
    std::string key;
    std::string path;
    int line = 0;
    YAML::Node value;
  };
  struct Field {
    std::string_view name;
    std::function<void(const Entry&)> read;
  };
  // Where a user's or the backend's password comes from, collected while visiting its map.
  struct PasswordSource {
    int count = 0;  // how many of password / password_env / password_file are set
    std::string path;
    int line = 0;
    std::optional<std::string> value;  // resolved password; unset if missing or on error
  };

  void Error(std::string key, int line, std::string message) {
    errors_.push_back({std::move(key), line, std::move(message)});
  }
  void Error(const Entry& e, std::string message) { Error(e.path, e.line, std::move(message)); }

  // Visits the pairs of `map` in file order through `fields`, reporting duplicate and unknown
  // keys. Null counts as an empty map (a section with all keys commented out). Returns the keys
  // seen, or nullopt after reporting that `map` is not a map.
  std::optional<std::set<std::string>> VisitMap(const YAML::Node& map, const std::string& path,
                                                int line, const std::vector<Field>& fields);
  // Visits the items of a list (null counts as empty); returns how many there were.
  int VisitList(const Entry& e,
                const std::function<void(const std::string& path, const YAML::Node& item)>& visit);

  const std::string* Scalar(const Entry& e, std::string_view expected);
  std::optional<std::string> ReadString(const Entry& e, bool allow_empty = false);
  std::optional<int64_t> ReadInt(const Entry& e, int64_t min, int64_t max);
  std::optional<bool> ReadBool(const Entry& e);
  std::optional<Endpoint> ReadEndpoint(const Entry& e);
  std::optional<uint64_t> ReadWithUnit(const Entry& e, std::span<const Unit> units,
                                       std::string_view form, uint64_t min, uint64_t max,
                                       std::string_view range);
  std::optional<milliseconds> ReadDuration(const Entry& e, bool zero_means_off = false);
  void ReadMaxWait(const Entry& e, milliseconds* out);
  std::optional<uint32_t> ReadSize(const Entry& e);
  template <typename E>
  std::optional<E> ReadEnum(const Entry& e, std::initializer_list<E> values);
  void ReadPassword(const Entry& e, PasswordSource* source);

  void ReadRoot(const YAML::Node& root);
  void ReadNodes(const Entry& e);
  void ReadUsers(const Entry& e);
  void ReadBackend(const Entry& e);
  void ReadLimits(const Entry& e);
  void ReadPool(const Entry& e);
  void ReadHealth(const Entry& e);
  void ReadFailover(const Entry& e);
  void ReadTls(const Entry& e);
  void ReadCoordination(const Entry& e);
  void ReadExistingFile(const Entry& f, std::string* out);
  // A path from the file: relative paths are relative to the config file's directory.
  std::filesystem::path Resolve(const std::string& path) const {
    std::filesystem::path file(path);
    if (file.is_relative() && !base_dir_.empty()) file = base_dir_ / file;
    return file;
  }
  void ReadAdmin(const Entry& e);
  void ReadRouting(const Entry& e);
  void ReadStrategyOverrides(const Entry& e);
  void ReadRoutingRules(const Entry& e);
  void ReadFunctionNames(const Entry& e, std::vector<std::string>* names);

  const std::filesystem::path base_dir_;
  bool inline_passwords_ = false;  // for relative password_file paths; empty: as given
  Config config_;
  std::vector<ConfigError> errors_;
  int user_count_ = 0;  // list items under `users`, valid or not
  int users_line_ = 0;
  bool users_not_a_list_ = false;  // already reported; "at least one user" would be noise
  int coordination_line_ = 0;
  int admin_listen_line_ = 0;
  bool admin_token_failed_ = false;  // a token was set but is invalid (already reported)
  std::vector<std::pair<std::string, int>> empty_user_passwords_;  // key path, line
};

LoadResult Loader::Load(const std::string& yaml) {
  try {
    const std::vector<YAML::Node> documents = YAML::LoadAll(yaml);
    if (documents.size() > 1) {
      Error("", LineOf(documents[1]), "the config must be a single YAML document");
    }
    ReadRoot(documents.empty() ? YAML::Node() : documents[0]);
  } catch (const YAML::ParserException& e) {
    errors_ = {{"", e.mark.line >= 0 ? e.mark.line + 1 : 0, "invalid YAML: " + e.msg}};
  } catch (const std::exception& e) {
    Error("", 0, std::string("unexpected error while reading the config: ") + e.what());
  }
  // File order; errors without a line (missing top-level keys) last.
  std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
    constexpr int kLast = std::numeric_limits<int>::max();
    return (a.line > 0 ? a.line : kLast) < (b.line > 0 ? b.line : kLast);
  });
  LoadResult result;
  if (errors_.empty()) result.config = std::make_shared<const Config>(std::move(config_));
  result.errors = std::move(errors_);
  result.inline_passwords = inline_passwords_;
  return result;
}

std::optional<std::set<std::string>> Loader::VisitMap(const YAML::Node& map,
                                                      const std::string& path, int line,
                                                      const std::vector<Field>& fields) {
  if (!map.IsMap() && !map.IsNull()) {
    Error(path, line,
          (path.empty() ? "the config must be a map of keys" : "must be a map of keys") +
              std::string(" (got ") + KindOf(map) + ")");
    return std::nullopt;
  }
  std::set<std::string> seen;
  std::map<std::string, int> key_lines;
  for (const auto& pair : map) {
    const int key_line = LineOf(pair.first);
    if (!pair.first.IsScalar()) {
      Error(path, key_line, "keys must be plain strings (got " + KindOf(pair.first) + ")");
      continue;
    }
    const std::string& key = pair.first.Scalar();
    const std::string key_path = path.empty() ? key : path + "." + key;
    const auto field =
        std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.name == key; });
    if (field == fields.end()) {
      std::string allowed;
      for (const Field& f : fields) allowed += (allowed.empty() ? "" : ", ") + std::string(f.name);
      Error(key_path, key_line, "unknown key " + Quote(key) + "; allowed keys: " + allowed);
      continue;
    }
    const auto [previous, inserted] = key_lines.emplace(key, key_line);
    if (!inserted) {
      Error(key_path, key_line,
            "duplicate key " + Quote(key) + " (first set on line " +
                std::to_string(previous->second) + ")");
      continue;
    }
    seen.insert(key);
    field->read(Entry{key, key_path, key_line, pair.second});
  }
  return seen;
}

int Loader::VisitList(
    const Entry& e,
    const std::function<void(const std::string& path, const YAML::Node& item)>& visit) {
  if (e.value.IsNull()) return 0;
  if (!e.value.IsSequence()) {
    Error(e, "must be a list (got " + KindOf(e.value) + ")");
    return 0;
  }
  int index = 0;
  for (const YAML::Node& item : e.value) {
    visit(e.path + "[" + std::to_string(index) + "]", item);
    ++index;
  }
  return index;
}

// The scalar text of e.value, or nullptr after reporting that it must be `expected`. The value
// itself is never shown here, so this is safe for passwords.
const std::string* Loader::Scalar(const Entry& e, std::string_view expected) {
  if (e.value.IsScalar()) return &e.value.Scalar();
  Error(e, "must be " + std::string(expected) + " (got " + KindOf(e.value) + ")");
  return nullptr;
}

std::optional<bool> Loader::ReadBool(const Entry& e) {
  const std::string* text = Scalar(e, "true or false");
  if (text == nullptr) return std::nullopt;
  if (*text == "true" || *text == "on" || *text == "yes") return true;
  if (*text == "false" || *text == "off" || *text == "no") return false;
  Error(e, "must be true or false (got " + Quote(*text) + ")");
  return std::nullopt;
}

// Never shows the value: it may be a password.
std::optional<std::string> Loader::ReadString(const Entry& e, bool allow_empty) {
  const std::string* text = Scalar(e, "a string");
  if (text == nullptr) return std::nullopt;
  if (text->empty() && !allow_empty) {
    Error(e, "must not be empty");
    return std::nullopt;
  }
  if (text->find('\0') != std::string::npos) {
    Error(e, "must not contain a NUL character");
    return std::nullopt;
  }
  return *text;
}

std::optional<int64_t> Loader::ReadInt(const Entry& e, int64_t min, int64_t max) {
  const std::string expected =
      max == std::numeric_limits<int>::max()
          ? "an integer >= " + std::to_string(min)
          : "an integer from " + std::to_string(min) + " to " + std::to_string(max);
  const std::string* text = Scalar(e, expected);
  if (text == nullptr) return std::nullopt;
  const std::optional<int64_t> value = ParseInt(*text);
  if (!value || *value < min || *value > max) {
    Error(e, "must be " + expected + " (got " + Quote(*text) + ")");
    return std::nullopt;
  }
  return value;
}

std::optional<Endpoint> Loader::ReadEndpoint(const Entry& e) {
  const std::string* text = Scalar(e, kEndpointForm);
  if (text == nullptr) return std::nullopt;
  std::optional<Endpoint> endpoint = ParseEndpoint(*text);
  if (!endpoint) Error(e, "must be " + std::string(kEndpointForm) + " (got " + Quote(*text) + ")");
  return endpoint;
}

std::optional<uint64_t> Loader::ReadWithUnit(const Entry& e, std::span<const Unit> units,
                                             std::string_view form, uint64_t min, uint64_t max,
                                             std::string_view range) {
  const std::string* text = Scalar(e, form);
  if (text == nullptr) return std::nullopt;
  const std::optional<uint64_t> value = ParseWithUnit(*text, units);
  if (!value) {
    Error(e, "must be " + std::string(form) + " (got " + Quote(*text) + ")");
    return std::nullopt;
  }
  if (*value < min || *value > max) {
    Error(e, "must be " + std::string(range) + " (got " + Quote(*text) + ")");
    return std::nullopt;
  }
  return value;
}

std::optional<milliseconds> Loader::ReadDuration(const Entry& e, bool zero_means_off) {
  const std::optional<uint64_t> ms =
      ReadWithUnit(e, kDurationUnits, kDurationForm, zero_means_off ? 0 : 1, kMaxDurationMs,
                   zero_means_off ? "between 0 (off) and 24h" : "between 1ms and 24h");
  if (!ms) return std::nullopt;
  return milliseconds(*ms);
}

std::optional<uint32_t> Loader::ReadSize(const Entry& e) {
  const std::optional<uint64_t> bytes = ReadWithUnit(e, kSizeUnits, kSizeForm, kMinMessageSize,
                                                     kMaxMessageSize, "between 1kB and 1GB");
  if (!bytes) return std::nullopt;
  return static_cast<uint32_t>(*bytes);
}

template <typename E>
std::optional<E> Loader::ReadEnum(const Entry& e, std::initializer_list<E> values) {
  std::string expected = "one of ";
  for (const E value : values) {
    if (value != *values.begin()) expected += ", ";
    expected += ToString(value);
  }
  const std::string* text = Scalar(e, expected);
  if (text == nullptr) return std::nullopt;
  for (const E value : values) {
    if (ToString(value) == *text) return value;
  }
  Error(e, "must be " + expected + " (got " + Quote(*text) + ")");
  return std::nullopt;
}

// Handles one of password / password_env / password_file. Errors never show the password.
void Loader::ReadPassword(const Entry& e, PasswordSource* source) {
  if (++source->count > 1) {
    Error(e, "set only one of " + std::string(kPasswordKeys));
    return;
  }
  source->path = e.path;
  source->line = e.line;
  if (e.key == "password") {
    Set(ReadString(e, /*allow_empty=*/true), &source->value);
    if (source->value && !source->value->empty()) inline_passwords_ = true;
    return;
  }
  const std::optional<std::string> name = ReadString(e);
  if (!name) return;
  if (e.key == "password_env") {
    const char* value = std::getenv(name->c_str());
    if (value == nullptr) {
      Error(e, "environment variable " + Quote(*name) + " is not set");
      return;
    }
    source->value = value;
    return;
  }
  const std::filesystem::path file = Resolve(*name);
  std::string contents;
  std::string error;
  if (!ReadFile(file.string(), kMaxPasswordFileSize, &contents, &error)) {
    Error(e, "cannot read password file " + file.string() + ": " + error);
    return;
  }
  if (contents.ends_with("\r\n")) {
    contents.resize(contents.size() - 2);
  } else if (contents.ends_with('\n')) {
    contents.pop_back();
  }
  if (contents.find('\0') != std::string::npos) {
    Error(e, "password file " + file.string() + " contains a NUL byte");
    return;
  }
  source->value = std::move(contents);
}

void Loader::ReadRoot(const YAML::Node& root) {
  const auto seen = VisitMap(
      root, "", LineOf(root),
      {
          {"listen", [&](const Entry& e) { Set(ReadEndpoint(e), &config_.listen); }},
          {"workers", [&](const Entry& e) { Set(ReadInt(e, 0, 256), &config_.workers); }},
          {"nodes", [&](const Entry& e) { ReadNodes(e); }},
          {"users", [&](const Entry& e) { ReadUsers(e); }},
          {"auth",
           [&](const Entry& e) {
             Set(ReadEnum(e, {AuthMethod::kScramSha256, AuthMethod::kMd5, AuthMethod::kTrust}),
                 &config_.auth);
           }},
          {"backend", [&](const Entry& e) { ReadBackend(e); }},
          {"routing", [&](const Entry& e) { ReadRouting(e); }},
          {"admin", [&](const Entry& e) { ReadAdmin(e); }},
          {"limits", [&](const Entry& e) { ReadLimits(e); }},
          {"pool", [&](const Entry& e) { ReadPool(e); }},
          {"health", [&](const Entry& e) { ReadHealth(e); }},
          {"failover", [&](const Entry& e) { ReadFailover(e); }},
          {"tls", [&](const Entry& e) { ReadTls(e); }},
          {"coordination", [&](const Entry& e) { ReadCoordination(e); }},
          {"log",
           [&](const Entry& e) {
             VisitMap(e.value, e.path, e.line,
                      {{"level", [&](const Entry& f) {
                          Set(ReadEnum(f, {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning,
                                           LogLevel::kError}),
                              &config_.log_level);
                        }}});
           }},
      });
  if (!seen) return;
  if (config_.coordination.etcd && !config_.failover.state_file.empty()) {
    Error("coordination.etcd", coordination_line_,
          "failover.state_file and coordination.etcd exclude each other: with etcd the failover "
          "record lives in etcd");
  }
  if (config_.coordination.etcd && config_.coordination.member.empty()) {
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
      std::snprintf(host, sizeof host, "pgrelay");
    config_.coordination.member = std::string(host) + ":" + std::to_string(config_.listen.port);
  }
  if (!seen->contains("nodes")) {
    Error("nodes", 0, "missing; list at least one node, e.g. - {name: pg1, host: 127.0.0.1}");
  }
  if (config_.auth != AuthMethod::kTrust) {
    if (user_count_ == 0 && !users_not_a_list_) {
      Error("users", users_line_,
            "must list at least one user, e.g. - {name: app, password_env: APP_PASSWORD} "
            "(only auth: trust allows none)");
    }
    for (const auto& [path, line] : empty_user_passwords_) {
      Error(path, line,
            "must not be empty: auth " + std::string(ToString(config_.auth)) + " needs a password");
    }
  }
  if (config_.admin_listen.ToString() == config_.listen.ToString()) {
    Error("admin.listen", admin_listen_line_,
          "must differ from listen (" + config_.listen.ToString() + ")");
  } else if (config_.admin_token.empty() && !admin_token_failed_ &&
             !IsLoopbackHost(config_.admin_listen.host)) {
    Error("admin.listen", admin_listen_line_,
          config_.admin_listen.ToString() +
              " is not a loopback address and no admin token is set: anyone who reaches it could "
              "use the admin endpoints. Set admin.token or admin.token_env, or listen on "
              "127.0.0.1 or [::1]");
  }
}

// A path to a file that exists (relative paths are relative to the config file).
void Loader::ReadExistingFile(const Entry& f, std::string* out) {
  const std::optional<std::string> path = ReadString(f);
  if (!path) return;
  const std::filesystem::path file = Resolve(*path);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) {
    Error(f, "no such file: " + file.string());
    return;
  }
  *out = file.string();
}

// tls: {mode, cert_file, key_file}
void Loader::ReadTls(const Entry& e) {
  TlsConfig& tls = config_.tls;
  std::optional<TlsMode> mode;
  const auto seen =
      VisitMap(e.value, e.path, e.line,
               {
                   {"mode",
                    [&](const Entry& f) {
                      mode = ReadEnum(f, {TlsMode::kDisable, TlsMode::kAllow, TlsMode::kRequire});
                    }},
                   {"cert_file", [&](const Entry& f) { ReadExistingFile(f, &tls.cert_file); }},
                   {"key_file", [&](const Entry& f) { ReadExistingFile(f, &tls.key_file); }},
               });
  if (!seen) return;
  const bool has_cert = seen->contains("cert_file"), has_key = seen->contains("key_file");
  if (has_cert != has_key) {
    Error(e.path + (has_cert ? ".key_file" : ".cert_file"), e.line,
          "missing; TLS needs both cert_file and key_file");
  }
  tls.mode = mode.value_or(has_cert && has_key ? TlsMode::kAllow : TlsMode::kDisable);
  if (tls.mode != TlsMode::kDisable && !(has_cert && has_key)) {
    Error(e.path + ".mode", e.line,
          "tls.mode " + std::string(ToString(tls.mode)) + " needs cert_file and key_file");
  }
}

// coordination: {member, etcd: {endpoints, prefix, lease_ttl, timeout, user, password*}}
void Loader::ReadCoordination(const Entry& e) {
  CoordinationConfig& coordination = config_.coordination;
  const auto seen = VisitMap(
      e.value, e.path, e.line,
      {
          {"member",
           [&](const Entry& f) {
             const std::optional<std::string> member = ReadString(f);
             if (!member) return;
             if (member->empty() || member->find_first_of("/ \t\r\n") != std::string::npos) {
               Error(f,
                     "must be a non-empty name without '/' or spaces (got " + Quote(*member) + ")");
               return;
             }
             coordination.member = *member;
           }},
          {"etcd",
           [&](const Entry& f) {
             EtcdConfig etcd;
             PasswordSource password;
             auto read_password = [&](const Entry& g) { ReadPassword(g, &password); };
             const auto keys = VisitMap(
                 f.value, f.path, f.line,
                 {
                     {"endpoints",
                      [&](const Entry& g) {
                        VisitList(g, [&](const std::string& path, const YAML::Node& item) {
                          const std::optional<Endpoint> endpoint =
                              ReadEndpoint(Entry{"", path, LineOf(item), item});
                          if (endpoint) etcd.endpoints.push_back(*endpoint);
                        });
                      }},
                     {"prefix",
                      [&](const Entry& g) {
                        const std::optional<std::string> prefix = ReadString(g);
                        if (!prefix) return;
                        if (prefix->size() < 2 || prefix->front() != '/' || prefix->back() == '/') {
                          Error(g, "must start with '/' and not end with one, e.g. /pgrelay/main");
                          return;
                        }
                        etcd.prefix = *prefix;
                      }},
                     {"lease_ttl",
                      [&](const Entry& g) {
                        const std::optional<milliseconds> ttl = ReadDuration(g);
                        if (!ttl) return;
                        if (*ttl < std::chrono::seconds(2) || ttl->count() % 1000 != 0) {
                          Error(g,
                                "must be whole seconds, at least 2s (etcd leases count seconds)");
                          return;
                        }
                        etcd.lease_ttl = std::chrono::duration_cast<std::chrono::seconds>(*ttl);
                      }},
                     {"timeout", [&](const Entry& g) { Set(ReadDuration(g), &etcd.timeout); }},
                     {"user", [&](const Entry& g) { Set(ReadString(g), &etcd.user); }},
                     {"password", read_password},
                     {"password_env", read_password},
                     {"password_file", read_password},
                 });
             if (!keys) return;
             if (etcd.endpoints.empty()) {
               Error(f.path + ".endpoints", f.line,
                     "missing; list the etcd members' client addresses, e.g. [127.0.0.1:2379]");
             }
             if (etcd.timeout * 3 > etcd.lease_ttl) {
               Error(f.path + ".timeout", f.line,
                     "must be at most a third of lease_ttl, so a lease is renewed in time");
             }
             if (password.count > 0 && etcd.user.empty()) {
               Error(f.path + ".user", f.line, "missing; an etcd password needs its user");
             }
             etcd.password = password.value.value_or("");
             coordination.etcd = std::move(etcd);
           }},
      });
  if (!seen) return;
  coordination_line_ = e.line;
}

// admin: {listen, token | token_env}
void Loader::ReadAdmin(const Entry& e) {
  int token_keys = 0;
  auto read_token = [&](const Entry& f) {
    if (++token_keys > 1) {
      Error(f, "set only one of token or token_env");
      admin_token_failed_ = true;
      return;
    }
    std::optional<std::string> value = ReadString(f);
    if (value && f.key == "token_env") {
      const char* env = std::getenv(value->c_str());
      if (env == nullptr || *env == '\0') {
        Error(f, "environment variable " + Quote(*value) + (env ? " is empty" : " is not set"));
        value.reset();
      } else {
        value = env;
      }
    }
    if (value && value->find_first_of(" \t\r\n") != std::string::npos) {
      Error(f, "the token must not contain spaces or line breaks");  // never shows the token
      value.reset();
    }
    if (value) {
      config_.admin_token = std::move(*value);
    } else {
      admin_token_failed_ = true;
    }
  };
  VisitMap(e.value, e.path, e.line,
           {
               {"listen",
                [&](const Entry& f) {
                  Set(ReadEndpoint(f), &config_.admin_listen);
                  admin_listen_line_ = f.line;
                }},
               {"token", read_token},
               {"token_env", read_token},
           });
}

void Loader::ReadNodes(const Entry& e) {
  std::map<std::string, std::string> names;      // node name -> path of the node
  std::map<std::string, std::string> addresses;  // host:port -> path of the node
  const int count = VisitList(e, [&](const std::string& path, const YAML::Node& item) {
    const size_t errors_before = errors_.size();
    NodeConfig node;
    const auto seen = VisitMap(
        item, path, LineOf(item),
        {
            {"name",
             [&](const Entry& f) {
               Set(ReadString(f), &node.name);
               if (node.name.empty()) return;
               const auto [it, inserted] = names.emplace(node.name, path);
               if (!inserted)
                 Error(f, "duplicate node name " + Quote(node.name) + " (also " + it->second + ")");
             }},
            {"host", [&](const Entry& f) { Set(ReadString(f), &node.host); }},
            {"port", [&](const Entry& f) { Set(ReadInt(f, 1, 65535), &node.port); }},
            {"weight",
             [&](const Entry& f) {
               Set(ReadInt(f, 0, std::numeric_limits<int>::max()), &node.weight);
             }},
        });
    if (!seen) return;
    if (!seen->contains("name"))
      Error(path + ".name", LineOf(item), "missing; a node needs a name");
    if (!seen->contains("host"))
      Error(path + ".host", LineOf(item), "missing; a node needs a host");
    if (errors_.size() == errors_before) {
      const std::string address = Endpoint{node.host, node.port}.ToString();
      const auto [it, inserted] = addresses.emplace(address, path);
      if (!inserted) {
        Error(path, LineOf(item), "same address " + address + " as " + it->second);
      }
    }
    config_.nodes.push_back(std::move(node));
  });
  if (count == 0 && (e.value.IsNull() || e.value.IsSequence())) {
    Error(e, "must list at least one node, e.g. - {name: pg1, host: 127.0.0.1}");
  }
  if (static_cast<size_t>(count) > kMaxNodes) {
    Error(e, "lists " + std::to_string(count) + " nodes; pgrelay supports at most " +
                 std::to_string(kMaxNodes));
  }
}

void Loader::ReadUsers(const Entry& e) {
  users_line_ = e.line;
  users_not_a_list_ = !e.value.IsNull() && !e.value.IsSequence();
  std::map<std::string, std::string> names;  // user name -> path of the user
  user_count_ = VisitList(e, [&](const std::string& path, const YAML::Node& item) {
    UserConfig user;
    PasswordSource password;
    auto read_password = [&](const Entry& f) { ReadPassword(f, &password); };
    const auto seen = VisitMap(
        item, path, LineOf(item),
        {
            {"name",
             [&](const Entry& f) {
               Set(ReadString(f), &user.name);
               if (user.name.empty()) return;
               const auto [it, inserted] = names.emplace(user.name, path);
               if (!inserted) {
                 Error(f, "duplicate user name " + Quote(user.name) + " (also " + it->second + ")");
               }
             }},
            {"password", read_password},
            {"password_env", read_password},
            {"password_file", read_password},
        });
    if (!seen) return;
    if (!seen->contains("name"))
      Error(path + ".name", LineOf(item), "missing; a user needs a name");
    if (password.count == 0) {
      Error(path, LineOf(item), "missing password; set one of " + std::string(kPasswordKeys));
    } else if (password.value && password.value->empty()) {
      empty_user_passwords_.emplace_back(password.path, password.line);
    }
    user.password = password.value.value_or("");
    config_.users.push_back(std::move(user));
  });
}

void Loader::ReadBackend(const Entry& e) {
  if (e.value.IsNull()) return;  // `backend:` with nothing below: unset
  BackendCredentials backend;
  PasswordSource password;
  BackendTlsConfig& tls = config_.backend_tls;
  auto read_password = [&](const Entry& f) { ReadPassword(f, &password); };
  const auto seen =
      VisitMap(e.value, e.path, e.line,
               {
                   {"user", [&](const Entry& f) { Set(ReadString(f), &backend.user); }},
                   {"password", read_password},
                   {"password_env", read_password},
                   {"password_file", read_password},
                   {"tls",
                    [&](const Entry& f) {
                      Set(ReadEnum(f, {BackendTlsMode::kDisable, BackendTlsMode::kPrefer,
                                       BackendTlsMode::kRequire, BackendTlsMode::kVerifyCa,
                                       BackendTlsMode::kVerifyFull}),
                          &tls.mode);
                    }},
                   {"ca_file", [&](const Entry& f) { ReadExistingFile(f, &tls.ca_file); }},
                   {"cert_file", [&](const Entry& f) { ReadExistingFile(f, &tls.cert_file); }},
                   {"key_file", [&](const Entry& f) { ReadExistingFile(f, &tls.key_file); }},
               });
  if (!seen) return;
  if ((tls.mode == BackendTlsMode::kVerifyCa || tls.mode == BackendTlsMode::kVerifyFull) &&
      !seen->contains("ca_file")) {
    Error(e.path + ".ca_file", e.line,
          "missing; backend.tls " + std::string(ToString(tls.mode)) +
              " verifies the nodes' certificates against this CA file");
  }
  if (seen->contains("cert_file") != seen->contains("key_file")) {
    Error(e.path + (seen->contains("cert_file") ? ".key_file" : ".cert_file"), e.line,
          "missing; a client certificate needs both cert_file and key_file");
  }
  const bool credentials = seen->contains("user") || password.count > 0;
  if (!credentials) return;  // only TLS settings: each client's own credentials
  if (!seen->contains("user")) {
    Error(e.path + ".user", e.line, "missing; the user pgrelay logs in to the nodes as");
  }
  backend.password = password.value.value_or("");
  config_.backend = std::move(backend);
}

void Loader::ReadFailover(const Entry& e) {
  FailoverConfig& failover = config_.failover;
  BackendCredentials control;
  PasswordSource password;
  auto read_password = [&](const Entry& f) { ReadPassword(f, &password); };
  const auto seen = VisitMap(
      e.value, e.path, e.line,
      {
          {"mode",
           [&](const Entry& f) {
             Set(ReadEnum(f, {FailoverMode::kOff, FailoverMode::kManual, FailoverMode::kAuto}),
                 &failover.mode);
           }},
          {"user", [&](const Entry& f) { Set(ReadString(f), &control.user); }},
          {"password", read_password},
          {"password_env", read_password},
          {"password_file", read_password},
          {"hold_writes",
           [&](const Entry& f) {
             Set(ReadDuration(f, /*zero_means_off=*/true), &failover.hold_writes);
           }},
          {"promote_timeout",
           [&](const Entry& f) { Set(ReadDuration(f), &failover.promote_timeout); }},
          {"max_lag_bytes",
           [&](const Entry& f) {
             Set(ReadWithUnit(f, kSizeUnits, kSizeForm, 0, uint64_t{1} << 50,
                              "between 0 (no bound) and 1PB"),
                 &failover.max_lag_bytes);
           }},
          {"hooks",
           [&](const Entry& f) {
             VisitMap(f.value, f.path, f.line,
                      {
                          {"before_promote",
                           [&](const Entry& g) { Set(ReadString(g), &failover.before_promote); }},
                          {"after_promote",
                           [&](const Entry& g) { Set(ReadString(g), &failover.after_promote); }},
                          {"timeout",
                           [&](const Entry& g) { Set(ReadDuration(g), &failover.hook_timeout); }},
                      });
           }},
          {"state_file",
           [&](const Entry& f) {
             const std::optional<std::string> path = ReadString(f);
             if (!path) return;
             failover.state_file = Resolve(*path).string();
           }},
      });
  if (!seen) return;
  if (seen->contains("user")) {
    control.password = password.value.value_or("");
    failover.control = std::move(control);
  } else if (password.count > 0) {
    Error(e.path + ".user", e.line, "missing; a failover password needs its user");
  }
}

void Loader::ReadLimits(const Entry& e) {
  Limits& limits = config_.limits;
  VisitMap(
      e.value, e.path, e.line,
      {
          {"max_client_connections",
           [&](const Entry& f) { Set(ReadInt(f, 1, 1'000'000), &limits.max_client_connections); }},
          {"max_message_size", [&](const Entry& f) { Set(ReadSize(f), &limits.max_message_size); }},
          {"startup_timeout",
           [&](const Entry& f) { Set(ReadDuration(f), &limits.startup_timeout); }},
          {"connect_timeout",
           [&](const Entry& f) { Set(ReadDuration(f), &limits.connect_timeout); }},
          {"client_idle_timeout",
           [&](const Entry& f) {
             Set(ReadDuration(f, /*zero_means_off=*/true), &limits.client_idle_timeout);
           }},
      });
}

void Loader::ReadPool(const Entry& e) {
  PoolConfig& pool = config_.pool;
  VisitMap(e.value, e.path, e.line,
           {
               {"mode",
                [&](const Entry& f) {
                  Set(ReadEnum(f, {PoolMode::kOff, PoolMode::kSession}), &pool.mode);
                }},
               {"idle_timeout", [&](const Entry& f) { Set(ReadDuration(f), &pool.idle_timeout); }},
               {"max_idle", [&](const Entry& f) { Set(ReadInt(f, 1, 100'000), &pool.max_idle); }},
           });
}

void Loader::ReadHealth(const Entry& e) {
  HealthConfig& health = config_.health;
  VisitMap(e.value, e.path, e.line,
           {
               {"interval", [&](const Entry& f) { Set(ReadDuration(f), &health.interval); }},
               {"timeout", [&](const Entry& f) { Set(ReadDuration(f), &health.timeout); }},
               {"database", [&](const Entry& f) { Set(ReadString(f), &health.database); }},
               {"failure_threshold",
                [&](const Entry& f) { Set(ReadInt(f, 1, 100), &health.failure_threshold); }},
               {"recovery_threshold",
                [&](const Entry& f) { Set(ReadInt(f, 1, 100), &health.recovery_threshold); }},
           });
}

void Loader::ReadRouting(const Entry& e) {
  RoutingConfig& routing = config_.routing;
  VisitMap(e.value, e.path, e.line,
           {
               {"strategy",
                [&](const Entry& f) {
                  Set(ReadEnum(f, {Strategy::kLeader, Strategy::kFollower,
                                   Strategy::kReadYourWrites, Strategy::kQuorum}),
                      &config_.strategy);
                }},
               {"rules", [&](const Entry& f) { ReadRoutingRules(f); }},
               {"side_effect_free_functions",
                [&](const Entry& f) { ReadFunctionNames(f, &routing.side_effect_free_functions); }},
               {"primary_functions",
                [&](const Entry& f) { ReadFunctionNames(f, &routing.primary_functions); }},
               {"classifier_cache_size",
                [&](const Entry& f) {
                  Set(ReadInt(f, 0, kMaxClassifierCacheSize), &routing.classifier_cache_size);
                }},
               {"load_balance",
                [&](const Entry& f) {
                  Set(ReadEnum(f, {LoadBalance::kRoundRobin, LoadBalance::kLeastConnections,
                                   LoadBalance::kRandom}),
                      &routing.load_balance);
                }},
               {"replica_affinity",
                [&](const Entry& f) {
                  Set(ReadEnum(f, {ReplicaAffinity::kNone, ReplicaAffinity::kSession}),
                      &routing.replica_affinity);
                }},
               {"lazy_connect", [&](const Entry& f) { Set(ReadBool(f), &routing.lazy_connect); }},
               {"max_lag_bytes",
                [&](const Entry& f) {
                  Set(ReadWithUnit(f, kSizeUnits, kSizeForm, 0, uint64_t{1} << 50,
                                   "between 0 (no bound) and 1PB"),
                      &routing.max_lag_bytes);
                }},
               {"max_lag",
                [&](const Entry& f) {
                  Set(ReadDuration(f, /*zero_means_off=*/true), &routing.max_lag);
                }},
               {"fallback_to_primary",
                [&](const Entry& f) { Set(ReadBool(f), &routing.fallback_to_primary); }},
               {"overrides", [&](const Entry& f) { ReadStrategyOverrides(f); }},
               {"ryw", [&](const Entry& f) { ReadMaxWait(f, &routing.ryw_max_wait); }},
               {"quorum", [&](const Entry& f) { ReadMaxWait(f, &routing.quorum_max_wait); }},
           });
}

// routing.ryw / routing.quorum: {max_wait: DURATION} (0 allowed: never wait).
void Loader::ReadMaxWait(const Entry& e, milliseconds* out) {
  VisitMap(
      e.value, e.path, e.line,
      {
          {"max_wait", [&](const Entry& f) { Set(ReadDuration(f, /*zero_means_off=*/true), out); }},
      });
}

// routing.rules: an ordered list of {match: REGEX, route: primary|replica}.
// routing.overrides: [{database: D, user: U, application_name: A, strategy: S}], first match wins.
void Loader::ReadStrategyOverrides(const Entry& e) {
  VisitList(e, [&](const std::string& path, const YAML::Node& item) {
    StrategyOverride o;
    bool valid = true;
    auto read = [&](std::string* out) {
      return [&, out](const Entry& f) {
        const std::optional<std::string> v = ReadString(f);
        if (v) {
          *out = *v;
        } else {
          valid = false;
        }
      };
    };
    const auto seen = VisitMap(item, path, LineOf(item),
                               {
                                   {"database", read(&o.database)},
                                   {"user", read(&o.user)},
                                   {"application_name", read(&o.application_name)},
                                   {"strategy",
                                    [&](const Entry& f) {
                                      const std::optional<Strategy> s = ReadEnum(
                                          f, {Strategy::kLeader, Strategy::kFollower,
                                              Strategy::kReadYourWrites, Strategy::kQuorum});
                                      if (s) {
                                        o.strategy = *s;
                                      } else {
                                        valid = false;
                                      }
                                    }},
                               });
    if (!seen) return;
    if (!seen->contains("strategy")) {
      Error(path + ".strategy", LineOf(item), "missing; an override needs a strategy");
      valid = false;
    }
    if (!seen->contains("database") && !seen->contains("user") &&
        !seen->contains("application_name")) {
      Error(path, LineOf(item),
            "needs at least one of database, user, application_name to match sessions by");
      valid = false;
    }
    if (valid) config_.routing.overrides.push_back(std::move(o));
  });
}

void Loader::ReadRoutingRules(const Entry& e) {
  VisitList(e, [&](const std::string& path, const YAML::Node& item) {
    RoutingRule rule;
    bool valid = true;
    const auto seen = VisitMap(
        item, path, LineOf(item),
        {
            {"match",
             [&](const Entry& f) {
               const std::optional<std::string> pattern = ReadString(f);
               if (!pattern) {
                 valid = false;
                 return;
               }
               try {
                 boost::regex(*pattern, boost::regex::perl);
                 rule.match = *pattern;
               } catch (const std::exception& error) {
                 Error(f, "invalid regular expression " + Quote(*pattern) + ": " + error.what());
                 valid = false;
               }
             }},
            {"route",
             [&](const Entry& f) {
               const std::optional<Route> route = ReadEnum(f, {Route::kPrimary, Route::kReplica});
               if (route) {
                 rule.route = *route;
               } else {
                 valid = false;
               }
             }},
        });
    if (!seen) return;
    if (!seen->contains("match")) {
      Error(path + ".match", LineOf(item),
            "missing; a rule needs a regular expression, e.g. {match: '^SELECT', route: replica}");
      valid = false;
    }
    if (!seen->contains("route")) {
      Error(path + ".route", LineOf(item), "missing; a rule needs route: primary or replica");
      valid = false;
    }
    if (valid) config_.routing.rules.push_back(std::move(rule));
  });
}

// A list of function names: "name" or "schema.name", as pg_proc spells them. Replaces the default.
void Loader::ReadFunctionNames(const Entry& e, std::vector<std::string>* names) {
  std::vector<std::string> result;
  VisitList(e, [&](const std::string& path, const YAML::Node& item) {
    const std::optional<std::string> name = ReadString(Entry{"", path, LineOf(item), item});
    if (!name) return;
    const bool has_space = std::any_of(name->begin(), name->end(), [](char c) {
      return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '(' || c == ')';
    });
    const size_t dot = name->find('.');
    if (has_space || dot == 0 || dot == name->size() - 1 ||
        (dot != std::string::npos && name->find('.', dot + 1) != std::string::npos)) {
      Error(path, LineOf(item),
            "must be a function name or schema.name without arguments, e.g. nextval or "
            "pg_catalog.random (got " +
                Quote(*name) + ")");
      return;
    }
    result.push_back(*name);
  });
  *names = std::move(result);
}

}  // namespace

std::string ConfigError::ToString() const {
  std::string out;
  if (line > 0) out += "line " + std::to_string(line) + ": ";
  if (!key.empty()) out += key + ": ";
  return out + message;
}

LoadResult LoadConfigFile(const std::string& path) {
  std::string yaml;
  std::string error;
  if (!ReadFile(path, kMaxConfigFileSize, &yaml, &error)) {
    LoadResult result;
    result.errors.push_back({"", 0, "cannot read config file " + path + ": " + error});
    return result;
  }
  LoadResult result = Loader(std::filesystem::path(path).parent_path()).Load(yaml);
  struct stat st {};
  if (result.inline_passwords && ::stat(path.c_str(), &st) == 0 &&
      (st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
    result.warnings.push_back(path + " holds passwords and other users can read it: chmod 600 " +
                              path + ", or use password_env / password_file");
  }
  return result;
}

LoadResult LoadConfigString(const std::string& yaml) { return Loader({}).Load(yaml); }

}  // namespace pgrelay::config
