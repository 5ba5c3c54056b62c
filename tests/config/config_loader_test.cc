#include "config/config_loader.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#ifndef PGRELAY_TEST_DATA_DIR
#define PGRELAY_TEST_DATA_DIR "tests"
#endif

namespace pgrelay::config {
namespace {

using std::chrono::milliseconds;

// Minimal valid config; tests append sections to it.
constexpr char kBase[] = R"(nodes:
  - {name: pg1, host: 127.0.0.1}
users:
  - {name: app, password: secret}
)";

std::string AllErrors(const LoadResult& result) {
  std::string out;
  for (const ConfigError& e : result.errors) out += e.ToString() + "\n";
  return out;
}

// Loads yaml that must be valid and returns the config.
Config MustLoad(const std::string& yaml) {
  const LoadResult result = LoadConfigString(yaml);
  EXPECT_TRUE(result.errors.empty()) << AllErrors(result);
  if (result.config == nullptr) return Config{};
  return *result.config;
}

// Loads yaml that must fail with exactly one error and returns it.
ConfigError SingleError(const std::string& yaml) {
  const LoadResult result = LoadConfigString(yaml);
  EXPECT_EQ(result.config, nullptr);
  EXPECT_EQ(result.errors.size(), 1u) << AllErrors(result);
  return result.errors.empty() ? ConfigError{} : result.errors.front();
}

// A scratch directory, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "pgrelay_config_XXXXXX");
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& contents) const {
    const std::filesystem::path file = path_ / name;
    std::filesystem::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary) << contents;
    return file.string();
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

TEST(ConfigLoaderTest, ExampleFileLoadsWithDefaults) {
  const LoadResult result = LoadConfigFile(PGRELAY_TEST_DATA_DIR "/../config/pgrelay.example.yaml");
  ASSERT_TRUE(result.errors.empty()) << AllErrors(result);
  ASSERT_NE(result.config, nullptr);
  const Config& c = *result.config;
  const Config defaults;
  ASSERT_EQ(c.nodes.size(), 3u);
  for (size_t i = 0; i < c.nodes.size(); ++i) {
    EXPECT_EQ(c.nodes[i].name, "pg" + std::to_string(i + 1));
    EXPECT_EQ(c.nodes[i].host, "127.0.0.1");
    EXPECT_EQ(c.nodes[i].port, 5432 + i);
    EXPECT_EQ(c.nodes[i].weight, 1);
  }
  ASSERT_EQ(c.users.size(), 1u);
  EXPECT_EQ(c.users[0].name, "app");
  EXPECT_FALSE(c.users[0].password.empty());
  EXPECT_EQ(c.listen.ToString(), defaults.listen.ToString());
  EXPECT_EQ(c.workers, defaults.workers);
  EXPECT_EQ(c.auth, defaults.auth);
  EXPECT_FALSE(c.backend.has_value());
  EXPECT_EQ(c.strategy, Strategy::kLeader);
  EXPECT_EQ(c.admin_listen.ToString(), defaults.admin_listen.ToString());
  EXPECT_EQ(c.limits.max_client_connections, defaults.limits.max_client_connections);
  EXPECT_EQ(c.limits.max_message_size, defaults.limits.max_message_size);
  EXPECT_EQ(c.limits.startup_timeout, defaults.limits.startup_timeout);
  EXPECT_EQ(c.limits.connect_timeout, defaults.limits.connect_timeout);
  EXPECT_EQ(c.limits.client_idle_timeout, defaults.limits.client_idle_timeout);
  EXPECT_EQ(c.health.interval, defaults.health.interval);
  EXPECT_EQ(c.health.timeout, defaults.health.timeout);
  EXPECT_EQ(c.health.database, defaults.health.database);
  EXPECT_EQ(c.health.failure_threshold, defaults.health.failure_threshold);
  EXPECT_EQ(c.health.recovery_threshold, defaults.health.recovery_threshold);
  EXPECT_EQ(c.log_level, defaults.log_level);
}

TEST(ConfigLoaderTest, MinimalConfigGetsDefaults) {
  const Config c = MustLoad(kBase);
  ASSERT_EQ(c.nodes.size(), 1u);
  EXPECT_EQ(c.nodes[0].name, "pg1");
  EXPECT_EQ(c.nodes[0].port, 5432);
  EXPECT_EQ(c.nodes[0].weight, 1);
  EXPECT_EQ(c.listen.ToString(), "127.0.0.1:6432");
  EXPECT_EQ(c.workers, 0);
  EXPECT_EQ(c.auth, AuthMethod::kScramSha256);
  EXPECT_FALSE(c.backend.has_value());
  EXPECT_EQ(c.strategy, Strategy::kLeader);
  EXPECT_EQ(c.admin_listen.ToString(), "127.0.0.1:9187");
  EXPECT_EQ(c.limits.max_client_connections, 1000);
  EXPECT_EQ(c.limits.max_message_size, 64u << 20);
  EXPECT_EQ(c.limits.startup_timeout, milliseconds(10000));
  EXPECT_EQ(c.limits.connect_timeout, milliseconds(5000));
  EXPECT_EQ(c.limits.client_idle_timeout, milliseconds(0));
  EXPECT_EQ(c.health.interval, milliseconds(500));
  EXPECT_EQ(c.health.timeout, milliseconds(3000));
  EXPECT_EQ(c.health.database, "postgres");
  EXPECT_EQ(c.health.failure_threshold, 3);
  EXPECT_EQ(c.health.recovery_threshold, 2);
  EXPECT_EQ(c.log_level, LogLevel::kInfo);
}

TEST(ConfigLoaderTest, AllKeysSet) {
  const Config c = MustLoad(R"(listen: 0.0.0.0:7000
workers: 4
nodes:
  - {name: a, host: db1.example, port: 6000, weight: 0}
  - name: b
    host: "::1"
    weight: 3
users:
  - {name: app, password: secret}
  - {name: other, password: ""}
auth: trust
backend: {user: relay, password: relaypw}
routing: {strategy: quorum}
admin: {listen: "[::1]:9000"}
limits:
  max_client_connections: 1000000
  max_message_size: 1GB
  startup_timeout: 500ms
  connect_timeout: 2min
  client_idle_timeout: 1h
health: {interval: 250, timeout: 2s, database: template1, failure_threshold: 5,
         recovery_threshold: 1}
log: {level: debug}
)");
  EXPECT_EQ(c.listen.ToString(), "0.0.0.0:7000");
  EXPECT_EQ(c.workers, 4);
  ASSERT_EQ(c.nodes.size(), 2u);
  EXPECT_EQ(c.nodes[0].host, "db1.example");
  EXPECT_EQ(c.nodes[0].port, 6000);
  EXPECT_EQ(c.nodes[0].weight, 0);
  EXPECT_EQ(c.nodes[1].host, "::1");
  EXPECT_EQ(c.nodes[1].weight, 3);
  ASSERT_EQ(c.users.size(), 2u);
  EXPECT_EQ(c.users[1].password, "");  // allowed with auth: trust
  EXPECT_EQ(c.auth, AuthMethod::kTrust);
  ASSERT_TRUE(c.backend.has_value());
  EXPECT_EQ(c.backend->user, "relay");
  EXPECT_EQ(c.backend->password, "relaypw");
  EXPECT_EQ(c.strategy, Strategy::kQuorum);
  EXPECT_EQ(c.admin_listen.host, "::1");
  EXPECT_EQ(c.admin_listen.port, 9000);
  EXPECT_EQ(c.admin_listen.ToString(), "[::1]:9000");
  EXPECT_EQ(c.limits.max_client_connections, 1000000);
  EXPECT_EQ(c.limits.max_message_size, 1u << 30);
  EXPECT_EQ(c.limits.startup_timeout, milliseconds(500));
  EXPECT_EQ(c.limits.connect_timeout, milliseconds(120000));
  EXPECT_EQ(c.limits.client_idle_timeout, milliseconds(3600000));
  EXPECT_EQ(c.health.interval, milliseconds(250));
  EXPECT_EQ(c.health.timeout, milliseconds(2000));
  EXPECT_EQ(c.health.database, "template1");
  EXPECT_EQ(c.health.failure_threshold, 5);
  EXPECT_EQ(c.health.recovery_threshold, 1);
  EXPECT_EQ(c.log_level, LogLevel::kDebug);
}

TEST(ConfigLoaderTest, EveryEnumValue) {
  for (AuthMethod m : {AuthMethod::kScramSha256, AuthMethod::kMd5, AuthMethod::kTrust}) {
    const std::string name(ToString(m));
    EXPECT_EQ(MustLoad(std::string(kBase) + "auth: " + name + "\n").auth, m) << name;
  }
  for (Strategy s :
       {Strategy::kLeader, Strategy::kFollower, Strategy::kReadYourWrites, Strategy::kQuorum}) {
    const std::string name(ToString(s));
    EXPECT_EQ(MustLoad(std::string(kBase) + "routing: {strategy: " + name + "}\n").strategy, s)
        << name;
  }
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    const std::string name(ToString(l));
    EXPECT_EQ(MustLoad(std::string(kBase) + "log: {level: " + name + "}\n").log_level, l) << name;
  }
  EXPECT_EQ(ToString(AuthMethod::kScramSha256), "scram-sha-256");
  EXPECT_EQ(ToString(Strategy::kReadYourWrites), "read-your-writes");
  EXPECT_EQ(ToString(LogLevel::kWarning), "warning");
}

TEST(ConfigLoaderTest, BadEnumValuesListTheAllowedOnes) {
  ConfigError e = SingleError(std::string(kBase) + "auth: sha1\n");
  EXPECT_EQ(e.key, "auth");
  EXPECT_EQ(e.line, 5);
  EXPECT_EQ(e.message, "must be one of scram-sha-256, md5, trust (got 'sha1')");

  e = SingleError(std::string(kBase) + "routing: {strategy: Leader}\n");
  EXPECT_EQ(e.key, "routing.strategy");
  EXPECT_EQ(e.message, "must be one of leader, follower, read-your-writes, quorum (got 'Leader')");

  e = SingleError(std::string(kBase) + "log:\n  level: warn\n");
  EXPECT_EQ(e.key, "log.level");
  EXPECT_EQ(e.line, 6);
  EXPECT_EQ(e.message, "must be one of debug, info, warning, error (got 'warn')");
}

TEST(ConfigLoaderTest, Durations) {
  const std::pair<const char*, int64_t> kValid[] = {
      {"1", 1},          {"500ms", 500}, {"10s", 10000},   {"2min", 120000},       {"1h", 3600000},
      {"24h", 86400000}, {"1 s", 1000},  {"0010s", 10000}, {"86400000", 86400000},
  };
  for (const auto& [text, ms] : kValid) {
    const Config c = MustLoad(std::string(kBase) + "limits: {startup_timeout: " + text + "}\n");
    EXPECT_EQ(c.limits.startup_timeout, milliseconds(ms)) << text;
  }
  EXPECT_EQ(MustLoad(std::string(kBase) + "limits: {client_idle_timeout: 0}\n")
                .limits.client_idle_timeout,
            milliseconds(0));
  EXPECT_EQ(MustLoad(std::string(kBase) + "limits: {client_idle_timeout: 30min}\n")
                .limits.client_idle_timeout,
            milliseconds(1800000));

  const char* kMalformed[] = {"abc", "1.5s", "-1s", "10 sec", "10S", "s", "1d", "\"\""};
  for (const char* text : kMalformed) {
    const ConfigError e =
        SingleError(std::string(kBase) + "limits: {connect_timeout: " + text + "}\n");
    EXPECT_EQ(e.key, "limits.connect_timeout") << text;
    EXPECT_EQ(e.line, 5) << text;
    EXPECT_NE(e.message.find("must be a duration: an integer with unit ms, s, min or h"),
              std::string::npos)
        << e.message;
  }
  const char* kOutOfRange[] = {"0", "0s", "25h", "86400001", "99999999999999999999h"};
  for (const char* text : kOutOfRange) {
    const ConfigError e = SingleError(std::string(kBase) + "health: {interval: " + text + "}\n");
    EXPECT_EQ(e.key, "health.interval") << text;
    EXPECT_EQ(e.message, "must be between 1ms and 24h (got '" + std::string(text) + "')");
  }
  EXPECT_EQ(SingleError(std::string(kBase) + "limits: {client_idle_timeout: 25h}\n").message,
            "must be between 0 (off) and 24h (got '25h')");
}

TEST(ConfigLoaderTest, Sizes) {
  const std::pair<const char*, uint32_t> kValid[] = {
      {"1024", 1024},       {"1kB", 1024},      {"1KB", 1024},     {"2048B", 2048},
      {"512kB", 512 << 10}, {"64MB", 64 << 20}, {"1GB", 1u << 30}, {"16 MB", 16 << 20},
  };
  for (const auto& [text, bytes] : kValid) {
    const Config c = MustLoad(std::string(kBase) + "limits: {max_message_size: " + text + "}\n");
    EXPECT_EQ(c.limits.max_message_size, bytes) << text;
  }
  const char* kMalformed[] = {"64mb", "1TB", "abc", "1.5MB", "-1kB", "MB"};
  for (const char* text : kMalformed) {
    const ConfigError e =
        SingleError(std::string(kBase) + "limits: {max_message_size: " + text + "}\n");
    EXPECT_EQ(e.key, "limits.max_message_size") << text;
    EXPECT_NE(e.message.find("must be a size"), std::string::npos) << e.message;
  }
  const char* kOutOfRange[] = {"0", "1023", "1023B", "2GB", "1025MB", "99999999999999999999GB"};
  for (const char* text : kOutOfRange) {
    const ConfigError e =
        SingleError(std::string(kBase) + "limits: {max_message_size: " + text + "}\n");
    EXPECT_EQ(e.message, "must be between 1kB and 1GB (got '" + std::string(text) + "')");
  }
}

TEST(ConfigLoaderTest, IntegerRanges) {
  EXPECT_EQ(MustLoad(std::string(kBase) + "workers: 256\n").workers, 256);
  struct Case {
    const char* yaml;
    const char* key;
    const char* message;
  };
  const Case kCases[] = {
      {"workers: 257\n", "workers", "must be an integer from 0 to 256 (got '257')"},
      {"workers: -1\n", "workers", "must be an integer from 0 to 256 (got '-1')"},
      {"workers: 1.0\n", "workers", "must be an integer from 0 to 256 (got '1.0')"},
      {"workers: 99999999999999999999\n", "workers",
       "must be an integer from 0 to 256 (got '99999999999999999999')"},
      {"limits: {max_client_connections: 0}\n", "limits.max_client_connections",
       "must be an integer from 1 to 1000000 (got '0')"},
      {"health: {failure_threshold: 0}\n", "health.failure_threshold",
       "must be an integer from 1 to 100 (got '0')"},
      {"health: {failure_threshold: 101}\n", "health.failure_threshold",
       "must be an integer from 1 to 100 (got '101')"},
      {"health: {recovery_threshold: 0}\n", "health.recovery_threshold",
       "must be an integer from 1 to 100 (got '0')"},
      {"health: {recovery_threshold: two}\n", "health.recovery_threshold",
       "must be an integer from 1 to 100 (got 'two')"},
  };
  for (const Case& c : kCases) {
    const ConfigError e = SingleError(std::string(kBase) + c.yaml);
    EXPECT_EQ(e.key, c.key) << c.yaml;
    EXPECT_EQ(e.message, c.message) << c.yaml;
  }
  const ConfigError e = SingleError(R"(nodes: [{name: a, host: h, weight: -1}]
users: [{name: app, password: x}]
)");
  EXPECT_EQ(e.key, "nodes[0].weight");
  EXPECT_EQ(e.message, "must be an integer >= 0 (got '-1')");
}

TEST(ConfigLoaderTest, Endpoints) {
  EXPECT_EQ(MustLoad(std::string(kBase) + "listen: \"[::]:5000\"\n").listen.ToString(),
            "[::]:5000");
  EXPECT_EQ(MustLoad(std::string(kBase) + "listen: localhost:1\n").listen.host, "localhost");
  const char* kBad[] = {"127.0.0.1",   "'127.0.0.1:'", "':6432'",    "127.0.0.1:0",
                        "h:65536",     "h:port",       "'::1:6432'", "'[::1]'",
                        "'[::1]6432'", "6432",         "'[]:5432'"};
  for (const char* text : kBad) {
    const ConfigError e = SingleError(std::string(kBase) + "listen: " + text + "\n");
    EXPECT_EQ(e.key, "listen") << text;
    EXPECT_NE(e.message.find("must be host:port with a port from 1 to 65535"), std::string::npos)
        << e.message;
  }
  const ConfigError e = SingleError(std::string(kBase) + "admin: {listen: 127.0.0.1:6432}\n");
  EXPECT_EQ(e.key, "admin.listen");
  EXPECT_EQ(e.line, 5);
  EXPECT_EQ(e.message, "must differ from listen (127.0.0.1:6432)");
}

TEST(ConfigLoaderTest, ReportsAllErrorsAtOnceInFileOrder) {
  const LoadResult result = LoadConfigString(R"(listen: nowhere
workers: many
nodes:
  - {name: pg1, host: 127.0.0.1, port: 5432}
  - {name: pg2, host: 127.0.0.1, port: abc}
  - name: pg3
    port: 70000
users:
  - {name: app, password_env: PGRELAY_TEST_SURELY_UNSET_VAR}
auth: sha1
limits:
  startup_timeout: forever
  max_message_size: 64XB
)");
  EXPECT_EQ(result.config, nullptr);
  const std::vector<std::pair<std::string, int>> expected = {
      {"listen", 1},
      {"workers", 2},
      {"nodes[1].port", 5},
      {"nodes[2].host", 6},
      {"nodes[2].port", 7},
      {"users[0].password_env", 9},
      {"auth", 10},
      {"limits.startup_timeout", 12},
      {"limits.max_message_size", 13},
  };
  std::vector<std::pair<std::string, int>> actual;
  for (const ConfigError& e : result.errors) actual.emplace_back(e.key, e.line);
  EXPECT_EQ(actual, expected) << AllErrors(result);
  ASSERT_EQ(result.errors.size(), expected.size());
  EXPECT_EQ(result.errors[2].ToString(),
            "line 5: nodes[1].port: must be an integer from 1 to 65535 (got 'abc')");
  EXPECT_EQ(result.errors[3].message, "missing; a node needs a host");
  EXPECT_EQ(result.errors[5].message,
            "environment variable 'PGRELAY_TEST_SURELY_UNSET_VAR' is not set");
}

TEST(ConfigLoaderTest, UnknownKeys) {
  const LoadResult result = LoadConfigString(R"(listne: 127.0.0.1:6432
nodes:
  - {name: pg1, host: h, prot: 5432}
users:
  - {name: app, password: x, pasword: y}
limits:
  max_conections: 5
backend: {user: u, pass: p}
)");
  ASSERT_EQ(result.errors.size(), 5u) << AllErrors(result);
  EXPECT_EQ(result.errors[0].key, "listne");
  EXPECT_EQ(result.errors[0].line, 1);
  EXPECT_EQ(result.errors[0].message.rfind("unknown key 'listne'; allowed keys: listen, ", 0), 0u)
      << result.errors[0].message;
  EXPECT_EQ(result.errors[1].key, "nodes[0].prot");
  EXPECT_EQ(result.errors[1].line, 3);
  EXPECT_EQ(result.errors[1].message, "unknown key 'prot'; allowed keys: name, host, port, weight");
  EXPECT_EQ(result.errors[2].key, "users[0].pasword");
  EXPECT_EQ(result.errors[3].key, "limits.max_conections");
  EXPECT_EQ(result.errors[3].line, 7);
  EXPECT_EQ(result.errors[4].key, "backend.pass");
}

TEST(ConfigLoaderTest, DuplicateNamesAndAddresses) {
  const LoadResult result = LoadConfigString(R"(nodes:
  - {name: pg1, host: 127.0.0.1, port: 5432}
  - {name: pg1, host: 127.0.0.1, port: 5433}
  - {name: pg3, host: 127.0.0.1}
users:
  - {name: app, password: x}
  - {name: app, password: y}
)");
  ASSERT_EQ(result.errors.size(), 3u) << AllErrors(result);
  EXPECT_EQ(result.errors[0].ToString(),
            "line 3: nodes[1].name: duplicate node name 'pg1' (also nodes[0])");
  EXPECT_EQ(result.errors[1].ToString(),
            "line 4: nodes[2]: same address 127.0.0.1:5432 as nodes[0]");
  EXPECT_EQ(result.errors[2].ToString(),
            "line 7: users[1].name: duplicate user name 'app' (also users[0])");
}

TEST(ConfigLoaderTest, DuplicateYamlKeys) {
  const ConfigError e = SingleError(std::string(kBase) + "workers: 1\nworkers: 2\n");
  EXPECT_EQ(e.key, "workers");
  EXPECT_EQ(e.line, 6);
  EXPECT_EQ(e.message, "duplicate key 'workers' (first set on line 5)");
}

TEST(ConfigLoaderTest, RequiredKeys) {
  LoadResult result = LoadConfigString("");
  ASSERT_EQ(result.errors.size(), 2u) << AllErrors(result);
  EXPECT_EQ(result.errors[0].key, "nodes");
  EXPECT_EQ(result.errors[1].key, "users");
  EXPECT_EQ(result.errors[0].line, 0);
  EXPECT_EQ(result.errors[0].ToString().rfind("nodes: missing; list at least one node", 0), 0u);

  result = LoadConfigString("nodes: []\nusers:\n");
  ASSERT_EQ(result.errors.size(), 2u) << AllErrors(result);
  EXPECT_EQ(result.errors[0].ToString(),
            "line 1: nodes: must list at least one node, e.g. - {name: pg1, host: 127.0.0.1}");
  EXPECT_EQ(result.errors[1].key, "users");
  EXPECT_EQ(result.errors[1].line, 2);

  result = LoadConfigString("nodes:\n  - {port: 5432}\nusers:\n  - {password: x}\n  - {name: b}\n");
  std::vector<std::string> messages;
  for (const ConfigError& e : result.errors) messages.push_back(e.ToString());
  const std::vector<std::string> expected = {
      "line 2: nodes[0].name: missing; a node needs a name",
      "line 2: nodes[0].host: missing; a node needs a host",
      "line 4: users[0].name: missing; a user needs a name",
      "line 5: users[1]: missing password; set one of password, password_env or password_file",
  };
  EXPECT_EQ(messages, expected);

  const ConfigError e = SingleError(std::string(kBase) + "backend: {password: x}\n");
  EXPECT_EQ(e.key, "backend.user");
  EXPECT_EQ(e.line, 5);
}

TEST(ConfigLoaderTest, TrustAllowsNoUsersAndEmptyPasswords) {
  const Config c = MustLoad("nodes: [{name: a, host: h}]\nauth: trust\n");
  EXPECT_TRUE(c.users.empty());
  EXPECT_EQ(c.MonitorCredentials().user, "");

  const ConfigError e =
      SingleError("nodes: [{name: a, host: h}]\nusers:\n  - {name: app, password: ''}\n");
  EXPECT_EQ(e.ToString(),
            "line 3: users[0].password: must not be empty: auth scram-sha-256 needs a password");
  MustLoad("nodes: [{name: a, host: h}]\nusers:\n  - {name: app, password: ''}\nauth: trust\n");
}

TEST(ConfigLoaderTest, PasswordSources) {
  ASSERT_EQ(setenv("PGRELAY_TEST_PW", "from-env", 1), 0);
  TempDir dir;
  const std::string lf = dir.Write("lf", "from-file\n");
  const std::string crlf = dir.Write("crlf", "crlf-pw\r\n");
  const std::string two = dir.Write("two", "two-lines\n\n");
  const std::string none = dir.Write("none", "no-newline");
  const Config c = MustLoad(
      "nodes: [{name: a, host: h}]\nusers:\n"
      "  - {name: e, password_env: PGRELAY_TEST_PW}\n"
      "  - {name: f, password_file: " +
      lf +
      "}\n"
      "  - {name: g, password_file: " +
      crlf +
      "}\n"
      "  - {name: h, password_file: " +
      two +
      "}\n"
      "  - {name: i, password_file: " +
      none +
      "}\n"
      "backend: {user: relay, password_file: " +
      lf + "}\n");
  ASSERT_EQ(c.users.size(), 5u);
  EXPECT_EQ(c.FindUser("e")->password, "from-env");
  EXPECT_EQ(c.FindUser("f")->password, "from-file");
  EXPECT_EQ(c.FindUser("g")->password, "crlf-pw");
  EXPECT_EQ(c.FindUser("h")->password, "two-lines\n");
  EXPECT_EQ(c.FindUser("i")->password, "no-newline");
  EXPECT_EQ(c.FindUser("nobody"), nullptr);
  EXPECT_EQ(c.MonitorCredentials().user, "relay");
  EXPECT_EQ(c.MonitorCredentials().password, "from-file");
  ASSERT_EQ(unsetenv("PGRELAY_TEST_PW"), 0);

  ConfigError e = SingleError(
      "nodes: [{name: a, host: h}]\nusers:\n  - {name: e, password_env: PGRELAY_TEST_PW}\n");
  EXPECT_EQ(e.ToString(),
            "line 3: users[0].password_env: environment variable 'PGRELAY_TEST_PW' is not set");

  const std::string missing = (dir.path() / "missing").string();
  e = SingleError("nodes: [{name: a, host: h}]\nusers:\n  - {name: f, password_file: " + missing +
                  "}\n");
  EXPECT_EQ(e.ToString(), "line 3: users[0].password_file: cannot read password file " + missing +
                              ": No such file or directory");

  e = SingleError(
      "nodes: [{name: a, host: h}]\nusers:\n"
      "  - {name: x, password: a, password_env: PGRELAY_TEST_PW}\n");
  EXPECT_EQ(e.ToString(),
            "line 3: users[0].password_env: set only one of password, "
            "password_env or password_file");
}

TEST(ConfigLoaderTest, BackendWithoutPasswordAndMonitorFallback) {
  Config c = MustLoad(std::string(kBase) + "backend: {user: relay}\n");
  ASSERT_TRUE(c.backend.has_value());
  EXPECT_EQ(c.backend->password, "");
  c = MustLoad(std::string(kBase) + "backend:\n");  // nothing below: unset
  EXPECT_FALSE(c.backend.has_value());
  EXPECT_EQ(c.MonitorCredentials().user, "app");
  EXPECT_EQ(c.MonitorCredentials().password, "secret");
}

TEST(ConfigLoaderTest, FileRelativePasswordFileAndUnreadableFile) {
  TempDir dir;
  dir.Write("secrets/app.pw", "rel-pw\n");
  const std::string path = dir.Write(
      "conf/pgrelay.yaml",
      "nodes: [{name: a, host: h}]\nusers: [{name: app, password_file: ../secrets/app.pw}]\n");
  const LoadResult result = LoadConfigFile(path);
  ASSERT_TRUE(result.errors.empty()) << AllErrors(result);
  EXPECT_EQ(result.config->users[0].password, "rel-pw");

  const std::string missing = (dir.path() / "nope.yaml").string();
  const LoadResult bad = LoadConfigFile(missing);
  EXPECT_EQ(bad.config, nullptr);
  ASSERT_EQ(bad.errors.size(), 1u);
  EXPECT_EQ(bad.errors[0].ToString(),
            "cannot read config file " + missing + ": No such file or directory");
  EXPECT_NE(LoadConfigFile(dir.path().string()).errors.at(0).message.find("Is a directory"),
            std::string::npos);
}

TEST(ConfigLoaderTest, WarnsWhenAFileWithPasswordsIsReadableByOthers) {
  TempDir dir;
  const std::string inline_pw = dir.Write(
      "inline.yaml", "nodes: [{name: a, host: h}]\nusers: [{name: app, password: s3cret}]\n");
  const std::string from_env = dir.Write(
      "env.yaml", "nodes: [{name: a, host: h}]\nusers: [{name: app, password_file: pw}]\n");
  dir.Write("pw", "x\n");
  ::chmod(inline_pw.c_str(), 0644);
  ::chmod(from_env.c_str(), 0644);
  LoadResult r = LoadConfigFile(inline_pw);
  ASSERT_TRUE(r.errors.empty()) << AllErrors(r);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("chmod 600"), std::string::npos) << r.warnings[0];
  EXPECT_EQ(r.warnings[0].find("s3cret"), std::string::npos);  // never the password itself
  EXPECT_TRUE(LoadConfigFile(from_env).warnings.empty());
  ::chmod(inline_pw.c_str(), 0600);
  EXPECT_TRUE(LoadConfigFile(inline_pw).warnings.empty());
}

TEST(ConfigLoaderTest, SyntaxErrorIsOneErrorWithTheParserLine) {
  const LoadResult result = LoadConfigString("nodes:\n  - {name: pg1, host: h\nusers: []\n");
  EXPECT_EQ(result.config, nullptr);
  ASSERT_EQ(result.errors.size(), 1u) << AllErrors(result);
  EXPECT_EQ(result.errors[0].key, "");
  EXPECT_EQ(result.errors[0].line, 3);
  EXPECT_EQ(result.errors[0].ToString().rfind("line 3: invalid YAML: ", 0), 0u)
      << result.errors[0].ToString();

  EXPECT_EQ(SingleError("a: b: c\n").line, 1);
  EXPECT_EQ(SingleError(std::string(kBase) + "---\nworkers: 1\n").message,
            "the config must be a single YAML document");
}

TEST(ConfigLoaderTest, TypeErrorsAreReportedNotThrown) {
  const LoadResult result = LoadConfigString(R"(listen: {host: h}
workers: [1]
nodes:
  - pg1
  - {name: [x], host: h, port: {a: 1}}
users: {name: app}
auth:
limits: [1, 2]
health: 5
routing: {strategy: [leader]}
log: {level: ~}
)");
  std::vector<std::string> messages;
  for (const ConfigError& e : result.errors) messages.push_back(e.ToString());
  const std::vector<std::string> expected = {
      "line 1: listen: must be host:port with a port from 1 to 65535, e.g. 127.0.0.1:6432 or "
      "[::1]:6432 (got a map)",
      "line 2: workers: must be an integer from 0 to 256 (got a list)",
      "line 4: nodes[0]: must be a map of keys (got a scalar)",
      "line 5: nodes[1].name: must be a string (got a list)",
      "line 5: nodes[1].port: must be an integer from 1 to 65535 (got a map)",
      "line 6: users: must be a list (got a map)",
      "line 7: auth: must be one of scram-sha-256, md5, trust (got nothing)",
      "line 8: limits: must be a map of keys (got a list)",
      "line 9: health: must be a map of keys (got a scalar)",
      "line 10: routing.strategy: must be one of leader, follower, read-your-writes, quorum (got "
      "a list)",
      "line 11: log.level: must be one of debug, info, warning, error (got nothing)",
  };
  EXPECT_EQ(messages, expected);

  EXPECT_EQ(SingleError("- a\n- b\n").ToString(),
            "line 1: the config must be a map of keys (got a list)");
  EXPECT_EQ(SingleError(std::string(kBase) + "? [a]\n: 1\n").ToString(),
            "line 5: keys must be plain strings (got a list)");
  // A list that contains itself through an alias must not recurse forever.
  EXPECT_EQ(SingleError("nodes: &x [*x]\nusers: [{name: a, password: b}]\n").ToString(),
            "line 1: nodes[0]: must be a map of keys (got a list)");
}

TEST(ConfigLoaderTest, ErrorsNeverContainPasswords) {
  TempDir dir;
  const std::string pw_file = dir.Write("pw", std::string("file-hunter2\0x\n", 15));
  ASSERT_EQ(setenv("PGRELAY_TEST_PW2", "env-hunter2", 1), 0);
  const LoadResult result = LoadConfigString(
      "nodes: [{name: a, host: h, port: hunter2}]\n"
      "users:\n"
      "  - {name: u1, password: lit-hunter2, password_env: PGRELAY_TEST_PW2}\n"
      "  - {name: u2, password_env: PGRELAY_TEST_PW2, password: lit-hunter2}\n"
      "  - {name: u3, password: [lit-hunter2]}\n"
      "  - {name: u4, password: \"lit-hunter2\\0\"}\n"
      "  - {name: u5, password_file: " +
      pw_file +
      "}\n"
      "  - {name: u6, password: {lit-hunter2: 1}}\n"
      "backend: {user: r, password: lit-hunter2, password_file: " +
      pw_file +
      "}\n"
      "auth: hunter\n");
  ASSERT_EQ(unsetenv("PGRELAY_TEST_PW2"), 0);
  EXPECT_GE(result.errors.size(), 8u) << AllErrors(result);
  for (const ConfigError& e : result.errors) {
    EXPECT_EQ(e.ToString().find("-hunter2"), std::string::npos) << e.ToString();
  }
}

TEST(ConfigErrorTest, ToString) {
  EXPECT_EQ((ConfigError{"nodes[1].port", 12, "must be between 1 and 65535"}).ToString(),
            "line 12: nodes[1].port: must be between 1 and 65535");
  EXPECT_EQ((ConfigError{"nodes", 0, "missing"}).ToString(), "nodes: missing");
  EXPECT_EQ((ConfigError{"", 3, "invalid YAML: x"}).ToString(), "line 3: invalid YAML: x");
}

TEST(EndpointTest, ToString) {
  EXPECT_EQ((Endpoint{"10.0.0.1", 5432}).ToString(), "10.0.0.1:5432");
  EXPECT_EQ((Endpoint{"::1", 6432}).ToString(), "[::1]:6432");
}

}  // namespace
}  // namespace pgrelay::config

namespace pgrelay::config {
namespace {

TEST(ConfigRoutingTest, ReadRoutingKnobs) {
  auto r = LoadConfigString(
      "nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n"
      "routing: {strategy: follower, load_balance: least_connections, max_lag_bytes: 1MB,\n"
      "          max_lag: 2s, fallback_to_primary: false, replica_affinity: session,\n"
      "          lazy_connect: true}\n");
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].ToString();
  EXPECT_TRUE(r.config->routing.lazy_connect);
  EXPECT_EQ(r.config->strategy, Strategy::kFollower);
  EXPECT_EQ(r.config->routing.load_balance, LoadBalance::kLeastConnections);
  EXPECT_EQ(r.config->routing.max_lag_bytes, 1u << 20);
  EXPECT_EQ(r.config->routing.max_lag, std::chrono::milliseconds(2000));
  EXPECT_FALSE(r.config->routing.fallback_to_primary);
  EXPECT_EQ(r.config->routing.replica_affinity, ReplicaAffinity::kSession);
}

TEST(ConfigRoutingTest, RoutingDefaultsAndErrors) {
  auto ok = LoadConfigString("nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n");
  ASSERT_TRUE(ok.errors.empty());
  EXPECT_EQ(ok.config->routing.load_balance, LoadBalance::kRoundRobin);
  EXPECT_TRUE(ok.config->routing.fallback_to_primary);
  EXPECT_EQ(ok.config->routing.replica_affinity, ReplicaAffinity::kNone);
  EXPECT_FALSE(ok.config->routing.lazy_connect);
  auto bad = LoadConfigString(
      "nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n"
      "routing: {load_balance: fastest, fallback_to_primary: maybe, max_lag: -1,\n"
      "          replica_affinity: transaction, lazy_connect: sometimes}\n");
  ASSERT_EQ(bad.errors.size(), 5u);
  EXPECT_EQ(bad.errors[0].key, "routing.load_balance");
  EXPECT_EQ(bad.errors[1].key, "routing.fallback_to_primary");
  EXPECT_EQ(bad.errors[2].key, "routing.max_lag");
  EXPECT_EQ(bad.errors[3].key, "routing.replica_affinity");
  EXPECT_NE(bad.errors[3].message.find("none, session"), std::string::npos)
      << bad.errors[3].message;
  EXPECT_EQ(bad.errors[4].key, "routing.lazy_connect");
}

TEST(ConfigPoolTest, ReadPool) {
  auto ok = LoadConfigString("nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n");
  ASSERT_TRUE(ok.errors.empty());
  EXPECT_EQ(ok.config->pool.mode, PoolMode::kOff);
  EXPECT_EQ(ok.config->pool.idle_timeout, std::chrono::milliseconds(60000));
  EXPECT_EQ(ok.config->pool.max_idle, 50);
  auto r = LoadConfigString(
      "nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n"
      "pool: {mode: session, idle_timeout: 2min, max_idle: 7}\n");
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].ToString();
  EXPECT_EQ(r.config->pool.mode, PoolMode::kSession);
  EXPECT_EQ(r.config->pool.idle_timeout, std::chrono::milliseconds(120000));
  EXPECT_EQ(r.config->pool.max_idle, 7);
  auto bad = LoadConfigString(
      "nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n"
      "pool: {mode: transaction, idle_timeout: 0, max_idle: 0, size: 3}\n");
  ASSERT_EQ(bad.errors.size(), 4u);
  EXPECT_EQ(bad.errors[0].key, "pool.mode");
  EXPECT_NE(bad.errors[0].message.find("off, session"), std::string::npos) << bad.errors[0].message;
  EXPECT_EQ(bad.errors[1].key, "pool.idle_timeout");
  EXPECT_EQ(bad.errors[2].key, "pool.max_idle");
  EXPECT_EQ(bad.errors[3].key, "pool.size");
}

TEST(ConfigRoutingTest, ClassifierKeys) {
  const Config c = MustLoad(std::string(kBase) + R"(routing:
  strategy: follower
  rules:
    - {match: '(?i)^\s*select .* from reports\b', route: replica}
    - {match: 'FOR UPDATE', route: primary}
  side_effect_free_functions: [pg_catalog.random, my_schema.pure_lookup]
  primary_functions: [nextval, audit.log_event]
  classifier_cache_size: 500
)");
  EXPECT_EQ(c.strategy, Strategy::kFollower);
  ASSERT_EQ(c.routing.rules.size(), 2u);
  EXPECT_EQ(c.routing.rules[0].match, "(?i)^\\s*select .* from reports\\b");
  EXPECT_EQ(c.routing.rules[0].route, Route::kReplica);
  EXPECT_EQ(c.routing.rules[1].match, "FOR UPDATE");
  EXPECT_EQ(c.routing.rules[1].route, Route::kPrimary);
  EXPECT_EQ(c.routing.side_effect_free_functions,
            (std::vector<std::string>{"pg_catalog.random", "my_schema.pure_lookup"}));
  EXPECT_EQ(c.routing.primary_functions, (std::vector<std::string>{"nextval", "audit.log_event"}));
  EXPECT_EQ(c.routing.classifier_cache_size, 500u);
}

TEST(ConfigRoutingTest, ClassifierDefaults) {
  const Config c = MustLoad(kBase);
  EXPECT_TRUE(c.routing.rules.empty());
  EXPECT_EQ(c.routing.classifier_cache_size, 10000u);
  EXPECT_EQ(c.routing.side_effect_free_functions, DefaultSideEffectFreeFunctions());
  EXPECT_EQ(c.routing.primary_functions, DefaultPrimaryFunctions());
  auto has = [](const std::vector<std::string>& v, const std::string& name) {
    return std::find(v.begin(), v.end(), name) != v.end();
  };
  EXPECT_TRUE(has(c.routing.side_effect_free_functions, "pg_catalog.random"));
  EXPECT_TRUE(has(c.routing.side_effect_free_functions, "pg_catalog.clock_timestamp"));
  EXPECT_TRUE(has(c.routing.primary_functions, "nextval"));
  EXPECT_TRUE(has(c.routing.primary_functions, "pg_advisory_lock"));
  EXPECT_TRUE(has(c.routing.primary_functions, "txid_current"));
  // Empty lists are allowed and replace the defaults.
  const Config empty = MustLoad(
      std::string(kBase) + "routing: {side_effect_free_functions: [], primary_functions: []}\n");
  EXPECT_TRUE(empty.routing.side_effect_free_functions.empty());
  EXPECT_TRUE(empty.routing.primary_functions.empty());
  // The example file documents the defaults.
  const LoadResult example =
      LoadConfigFile(PGRELAY_TEST_DATA_DIR "/../config/pgrelay.example.yaml");
  ASSERT_TRUE(example.errors.empty()) << AllErrors(example);
  EXPECT_EQ(example.config->routing.side_effect_free_functions, DefaultSideEffectFreeFunctions());
  EXPECT_EQ(example.config->routing.primary_functions, DefaultPrimaryFunctions());
  EXPECT_EQ(example.config->routing.classifier_cache_size, 10000u);
  EXPECT_TRUE(example.config->routing.rules.empty());
}

TEST(ConfigRoutingTest, ClassifierKeyErrors) {
  // Every problem at once, each with its line.
  const LoadResult r = LoadConfigString(std::string(kBase) + R"(routing:
  rules:
    - {match: '(unclosed', route: primary}
    - {match: 'ok', route: sideways}
    - {route: replica}
    - {match: 'x', route: primary, weight: 2}
    - just a string
  side_effect_free_functions: [random(), 'two words', a.b.c, '']
  primary_functions: nextval
  classifier_cache_size: -1
)");
  EXPECT_EQ(r.config, nullptr);
  std::vector<std::pair<std::string, int>> got;
  for (const ConfigError& e : r.errors) got.emplace_back(e.key, e.line);
  const std::vector<std::pair<std::string, int>> want = {
      {"routing.rules[0].match", 7},
      {"routing.rules[1].route", 8},
      {"routing.rules[2].match", 9},
      {"routing.rules[3].weight", 10},
      {"routing.rules[4]", 11},
      {"routing.side_effect_free_functions[0]", 12},
      {"routing.side_effect_free_functions[1]", 12},
      {"routing.side_effect_free_functions[2]", 12},
      {"routing.side_effect_free_functions[3]", 12},
      {"routing.primary_functions", 13},
      {"routing.classifier_cache_size", 14},
  };
  EXPECT_EQ(got, want) << AllErrors(r);
  ASSERT_FALSE(r.errors.empty());
  EXPECT_NE(r.errors[0].message.find("invalid regular expression '(unclosed'"), std::string::npos)
      << r.errors[0].message;
  EXPECT_EQ(r.errors.back().message, "must be an integer from 0 to 10000000 (got '-1')");
}

TEST(ConfigAdminTest, TokenSources) {
  EXPECT_EQ(MustLoad(kBase).admin_token, "");
  EXPECT_EQ(MustLoad(std::string(kBase) + "admin: {token: s3cret-token}\n").admin_token,
            "s3cret-token");
  ASSERT_EQ(setenv("PGRELAY_TEST_ADMIN_TOKEN", "env-token", 1), 0);
  const Config c =
      MustLoad(std::string(kBase) +
               "admin:\n  listen: 0.0.0.0:9187\n  token_env: PGRELAY_TEST_ADMIN_TOKEN\n");
  EXPECT_EQ(c.admin_token, "env-token");
  EXPECT_EQ(c.admin_listen.ToString(), "0.0.0.0:9187");
  ASSERT_EQ(unsetenv("PGRELAY_TEST_ADMIN_TOKEN"), 0);
}

TEST(ConfigAdminTest, NonLoopbackListenNeedsAToken) {
  for (const char* listen :
       {"0.0.0.0:9187", "10.1.2.3:9187", "\"[::]:9187\"", "example.com:9187"}) {
    const ConfigError e = SingleError(std::string(kBase) + "admin:\n  listen: " + listen + "\n");
    EXPECT_EQ(e.key, "admin.listen") << listen;
    EXPECT_EQ(e.line, 6) << listen;
    EXPECT_NE(e.message.find("is not a loopback address and no admin token is set"),
              std::string::npos)
        << e.message;
    EXPECT_NE(e.message.find("admin.token or admin.token_env"), std::string::npos) << e.message;
  }
  for (const char* listen :
       {"127.0.0.1:9000", "127.8.9.10:9000", "\"[::1]:9000\"", "localhost:9000"}) {
    MustLoad(std::string(kBase) + "admin: {listen: " + listen + "}\n");
  }
}

TEST(ConfigAdminTest, TokenErrorsNeverShowTheToken) {
  ConfigError e = SingleError(std::string(kBase) + "admin: {token: ''}\n");
  EXPECT_EQ(e.key, "admin.token");
  EXPECT_EQ(e.message, "must not be empty");
  e = SingleError(std::string(kBase) + "admin: {token: 'has space'}\n");
  EXPECT_EQ(e.message, "the token must not contain spaces or line breaks");
  EXPECT_EQ(e.message.find("has space"), std::string::npos);
  ASSERT_EQ(unsetenv("PGRELAY_TEST_NO_SUCH_TOKEN"), 0);
  e = SingleError(std::string(kBase) + "admin: {token_env: PGRELAY_TEST_NO_SUCH_TOKEN}\n");
  EXPECT_EQ(e.key, "admin.token_env");
  EXPECT_EQ(e.message, "environment variable 'PGRELAY_TEST_NO_SUCH_TOKEN' is not set");
  ASSERT_EQ(setenv("PGRELAY_TEST_EMPTY_TOKEN", "", 1), 0);
  e = SingleError(std::string(kBase) + "admin: {token_env: PGRELAY_TEST_EMPTY_TOKEN}\n");
  EXPECT_EQ(e.message, "environment variable 'PGRELAY_TEST_EMPTY_TOKEN' is empty");
  ASSERT_EQ(unsetenv("PGRELAY_TEST_EMPTY_TOKEN"), 0);
  e = SingleError(std::string(kBase) + "admin: {token: abc, token_env: X}\n");
  EXPECT_EQ(e.key, "admin.token_env");
  EXPECT_EQ(e.message, "set only one of token or token_env");
  // A broken token on a public address is reported once, not also as "no token".
  e = SingleError(std::string(kBase) + "admin: {listen: 0.0.0.0:9187, token: ''}\n");
  EXPECT_EQ(e.key, "admin.token");
}

}  // namespace
}  // namespace pgrelay::config

namespace pgrelay::config {
namespace {

TEST(ConfigRoutingTest, StrategyOverridesFirstMatchWins) {
  auto r = LoadConfigString(
      "nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n"
      "routing:\n  strategy: follower\n  overrides:\n"
      "    - {database: billing, strategy: leader}\n"
      "    - {user: reporter, application_name: dash, strategy: quorum}\n");
  ASSERT_TRUE(r.errors.empty()) << r.errors[0].ToString();
  const Config& c = *r.config;
  EXPECT_EQ(c.StrategyFor("billing", "u", ""), Strategy::kLeader);
  EXPECT_EQ(c.StrategyFor("app", "reporter", "dash"), Strategy::kQuorum);
  EXPECT_EQ(c.StrategyFor("app", "reporter", "other"), Strategy::kFollower);
  EXPECT_EQ(c.StrategyFor("app", "u", "dash"), Strategy::kFollower);
}

TEST(ConfigRoutingTest, StrategyOverrideNeedsAMatcherAndAStrategy) {
  auto r = LoadConfigString(
      "nodes: [{name: a, host: h}]\nusers: [{name: u, password: p}]\n"
      "routing:\n  overrides:\n    - {strategy: leader}\n    - {user: x}\n");
  ASSERT_EQ(r.errors.size(), 2u);
  EXPECT_EQ(r.errors[0].key, "routing.overrides[0]");
  EXPECT_EQ(r.errors[1].key, "routing.overrides[1].strategy");
}

}  // namespace
}  // namespace pgrelay::config

namespace pgrelay::config {
namespace {

TEST(ConfigTlsTest, ModeDefaultsFromTheFiles) {
  EXPECT_EQ(MustLoad(kBase).tls.mode, TlsMode::kDisable);
  const std::string dir = ::testing::TempDir();
  const std::string cert = dir + "/tls_test.crt", key = dir + "/tls_test.key";
  std::ofstream(cert) << "x";
  std::ofstream(key) << "x";
  const Config c =
      MustLoad(std::string(kBase) + "tls: {cert_file: " + cert + ", key_file: " + key + "}\n");
  EXPECT_EQ(c.tls.mode, TlsMode::kAllow);
  EXPECT_EQ(c.tls.cert_file, cert);
  EXPECT_EQ(MustLoad(std::string(kBase) + "tls: {mode: require, cert_file: " + cert +
                     ", key_file: " + key + "}\n")
                .tls.mode,
            TlsMode::kRequire);
}

TEST(ConfigTlsTest, BackendTls) {
  EXPECT_EQ(MustLoad(kBase).backend_tls.mode, BackendTlsMode::kPrefer);
  const std::string ca = ::testing::TempDir() + "/tls_test_ca.crt";
  std::ofstream(ca) << "x";
  // TLS settings alone leave the credentials unset (each client's own).
  const Config c =
      MustLoad(std::string(kBase) + "backend: {tls: verify-full, ca_file: " + ca + "}\n");
  EXPECT_FALSE(c.backend.has_value());
  EXPECT_EQ(c.backend_tls.mode, BackendTlsMode::kVerifyFull);
  EXPECT_EQ(c.backend_tls.ca_file, ca);
  const Config d = MustLoad(std::string(kBase) + "backend: {user: relay, tls: disable}\n");
  ASSERT_TRUE(d.backend.has_value());
  EXPECT_EQ(d.backend->user, "relay");
  EXPECT_EQ(d.backend_tls.mode, BackendTlsMode::kDisable);
  LoadResult r = LoadConfigString(std::string(kBase) + "backend: {tls: verify-ca}\n");
  ASSERT_EQ(r.errors.size(), 1u) << AllErrors(r);
  EXPECT_EQ(r.errors[0].key, "backend.ca_file");
  r = LoadConfigString(std::string(kBase) + "backend: {tls: sometimes, cert_file: " + ca + "}\n");
  const std::string all = AllErrors(r);
  EXPECT_NE(all.find("backend.tls"), std::string::npos) << all;
  EXPECT_NE(all.find("backend.key_file"), std::string::npos) << all;
}

TEST(ConfigTlsTest, Problems) {
  const std::string dir = ::testing::TempDir();
  const std::string cert = dir + "/tls_test2.crt";
  std::ofstream(cert) << "x";
  LoadResult r = LoadConfigString(std::string(kBase) + "tls: {mode: require}\n");
  ASSERT_EQ(r.errors.size(), 1u) << AllErrors(r);
  EXPECT_NE(r.errors[0].message.find("needs cert_file and key_file"), std::string::npos);
  r = LoadConfigString(std::string(kBase) + "tls: {cert_file: " + cert + "}\n");
  ASSERT_FALSE(r.errors.empty());
  EXPECT_EQ(r.errors[0].key, "tls.key_file") << AllErrors(r);
  r = LoadConfigString(std::string(kBase) + "tls: {cert_file: " + cert +
                       ", key_file: /nonexistent/key.pem, mode: sometimes}\n");
  const std::string all = AllErrors(r);
  EXPECT_NE(all.find("no such file: /nonexistent/key.pem"), std::string::npos) << all;
  EXPECT_NE(all.find("tls.mode"), std::string::npos) << all;
}

}  // namespace
}  // namespace pgrelay::config

namespace pgrelay::config {
namespace {

TEST(ConfigLoaderTest, CoordinationEtcd) {
  const Config none = MustLoad(kBase);
  EXPECT_FALSE(none.coordination.etcd.has_value());

  setenv("PGRELAY_TEST_ETCD_PASSWORD", "etcd-secret", 1);
  const Config c = MustLoad(std::string(kBase) + R"(listen: 127.0.0.1:7000
coordination:
  member: relay-a
  etcd:
    endpoints: [127.0.0.1:2379, "10.0.0.2:2379"]
    prefix: /pgrelay/prod
    lease_ttl: 6s
    timeout: 500ms
    user: pgrelay
    password_env: PGRELAY_TEST_ETCD_PASSWORD
)");
  ASSERT_TRUE(c.coordination.etcd.has_value());
  const EtcdConfig& etcd = *c.coordination.etcd;
  ASSERT_EQ(etcd.endpoints.size(), 2u);
  EXPECT_EQ(etcd.endpoints[0].ToString(), "127.0.0.1:2379");
  EXPECT_EQ(etcd.endpoints[1].ToString(), "10.0.0.2:2379");
  EXPECT_EQ(etcd.prefix, "/pgrelay/prod");
  EXPECT_EQ(etcd.lease_ttl, std::chrono::seconds(6));
  EXPECT_EQ(etcd.timeout, milliseconds(500));
  EXPECT_EQ(etcd.user, "pgrelay");
  EXPECT_EQ(etcd.password, "etcd-secret");
  EXPECT_EQ(c.coordination.member, "relay-a");

  // Defaults: prefix, TTL, timeout; the member is named after the host and the listen port.
  const Config d =
      MustLoad(std::string(kBase) +
               "listen: 127.0.0.1:7001\ncoordination: {etcd: {endpoints: [127.0.0.1:2379]}}\n");
  EXPECT_EQ(d.coordination.etcd->prefix, "/pgrelay/main");
  EXPECT_EQ(d.coordination.etcd->lease_ttl, std::chrono::seconds(5));
  EXPECT_EQ(d.coordination.etcd->timeout, milliseconds(1000));
  EXPECT_TRUE(d.coordination.member.ends_with(":7001")) << d.coordination.member;

  // Automatic failover through the coordinator (failover by majority).
  const Config a = MustLoad(std::string(kBase) +
                            "failover: {mode: auto}\n"
                            "coordination: {etcd: {endpoints: [127.0.0.1:2379]}}\n");
  EXPECT_EQ(a.failover.mode, FailoverMode::kAuto);
  EXPECT_TRUE(a.coordination.etcd.has_value());
}

TEST(ConfigLoaderTest, CoordinationEtcdErrors) {
  auto error = [](const std::string& section) { return SingleError(std::string(kBase) + section); };
  ConfigError e = error("coordination: {etcd: {prefix: /x}}\n");
  EXPECT_EQ(e.key, "coordination.etcd.endpoints");
  EXPECT_NE(e.message.find("missing"), std::string::npos) << e.message;

  e = error("coordination: {etcd: {endpoints: [127.0.0.1:2379], prefix: pgrelay/}}\n");
  EXPECT_EQ(e.key, "coordination.etcd.prefix");

  e = error("coordination: {etcd: {endpoints: [127.0.0.1:2379], lease_ttl: 1s}}\n");
  EXPECT_EQ(e.key, "coordination.etcd.lease_ttl");
  e = error("coordination: {etcd: {endpoints: [127.0.0.1:2379], lease_ttl: 2500ms}}\n");
  EXPECT_NE(e.message.find("whole seconds"), std::string::npos) << e.message;

  e = error("coordination: {etcd: {endpoints: [127.0.0.1:2379], lease_ttl: 3s, timeout: 2s}}\n");
  EXPECT_EQ(e.key, "coordination.etcd.timeout");
  EXPECT_NE(e.message.find("a third of lease_ttl"), std::string::npos) << e.message;

  e = error("coordination: {etcd: {endpoints: [127.0.0.1:2379], password: x}}\n");
  EXPECT_EQ(e.key, "coordination.etcd.user");

  e = error("coordination: {member: 'a b', etcd: {endpoints: [127.0.0.1:2379]}}\n");
  EXPECT_EQ(e.key, "coordination.member");

  e = error(
      "failover: {mode: manual, state_file: /tmp/x}\n"
      "coordination: {etcd: {endpoints: [127.0.0.1:2379]}}\n");
  EXPECT_EQ(e.key, "coordination.etcd");
  EXPECT_NE(e.message.find("exclude each other"), std::string::npos) << e.message;
}

}  // namespace
}  // namespace pgrelay::config
