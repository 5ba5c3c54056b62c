#include "config/config.h"

#include <arpa/inet.h>

#include <cstring>

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

std::string_view ToString(ReplicaAffinity a) {
  switch (a) {
    case ReplicaAffinity::kNone:
      return "none";
    case ReplicaAffinity::kSession:
      return "session";
  }
  return "unknown";
}

std::string_view ToString(PoolMode m) {
  switch (m) {
    case PoolMode::kOff:
      return "off";
    case PoolMode::kSession:
      return "session";
  }
  return "unknown";
}

std::string_view ToString(LoadBalance b) {
  switch (b) {
    case LoadBalance::kRoundRobin:
      return "round_robin";
    case LoadBalance::kLeastConnections:
      return "least_connections";
    case LoadBalance::kRandom:
      return "random";
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

std::string_view ToString(Route r) {
  switch (r) {
    case Route::kPrimary:
      return "primary";
    case Route::kReplica:
      return "replica";
  }
  return "unknown";
}

std::string_view ToString(TlsMode m) {
  switch (m) {
    case TlsMode::kDisable:
      return "disable";
    case TlsMode::kAllow:
      return "allow";
    case TlsMode::kRequire:
      return "require";
  }
  return "unknown";
}

std::string_view ToString(BackendTlsMode m) {
  switch (m) {
    case BackendTlsMode::kDisable:
      return "disable";
    case BackendTlsMode::kPrefer:
      return "prefer";
    case BackendTlsMode::kRequire:
      return "require";
    case BackendTlsMode::kVerifyCa:
      return "verify-ca";
    case BackendTlsMode::kVerifyFull:
      return "verify-full";
  }
  return "unknown";
}

std::string_view ToString(FailoverMode m) {
  switch (m) {
    case FailoverMode::kOff:
      return "off";
    case FailoverMode::kManual:
      return "manual";
    case FailoverMode::kAuto:
      return "auto";
  }
  return "unknown";
}

std::vector<std::string> DefaultSideEffectFreeFunctions() {
  // Volatile in pg_proc but without side effects, and answering the same on a replica. Built-ins
  // are schema-qualified so that a user function of the same name still counts as volatile.
  return {"pg_catalog.random", "pg_catalog.clock_timestamp", "pg_catalog.timeofday",
          "pg_catalog.gen_random_uuid", "pg_catalog.statement_timestamp",
          "pg_catalog.transaction_timestamp", "pg_catalog.now", "pg_catalog.current_query",
          "pg_catalog.pg_sleep", "pg_catalog.pg_sleep_for", "pg_catalog.pg_sleep_until",
          "pg_catalog.pg_relation_size", "pg_catalog.pg_table_size", "pg_catalog.pg_indexes_size",
          "pg_catalog.pg_total_relation_size", "pg_catalog.pg_database_size",
          "pg_catalog.pg_tablespace_size",
          // Recovery and replication status: reads that a replica answers for itself.
          "pg_catalog.pg_is_in_recovery", "pg_catalog.pg_is_wal_replay_paused",
          "pg_catalog.pg_get_wal_replay_pause_state", "pg_catalog.pg_last_wal_receive_lsn",
          "pg_catalog.pg_last_wal_replay_lsn", "pg_catalog.pg_last_xact_replay_timestamp",
          "pg_catalog.pg_backend_pid", "pg_catalog.inet_server_addr", "pg_catalog.inet_server_port",
          "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "gen_random_bytes"};
}

std::vector<std::string> DefaultPrimaryFunctions() {
  // Side effects on the primary, session state kept there, or an error on a standby. Several are
  // not volatile in pg_proc (txid_current and pg_current_xact_id are "stable" but assign an xid).
  return {"nextval",
          "setval",
          "currval",
          "lastval",
          "pg_advisory_lock",
          "pg_advisory_lock_shared",
          "pg_try_advisory_lock",
          "pg_try_advisory_lock_shared",
          "pg_advisory_unlock",
          "pg_advisory_unlock_shared",
          "pg_advisory_unlock_all",
          "pg_advisory_xact_lock",
          "pg_advisory_xact_lock_shared",
          "pg_try_advisory_xact_lock",
          "pg_try_advisory_xact_lock_shared",
          "txid_current",
          "pg_current_xact_id",
          "pg_export_snapshot",
          "pg_notify",
          "pg_current_wal_lsn",
          "pg_current_wal_insert_lsn",
          "pg_current_wal_flush_lsn",
          "pg_switch_wal",
          "pg_create_restore_point"};
}

Strategy Config::StrategyFor(std::string_view database, std::string_view user,
                             std::string_view application_name) const {
  for (const StrategyOverride& o : routing.overrides) {
    if (!o.database.empty() && o.database != database) continue;
    if (!o.user.empty() && o.user != user) continue;
    if (!o.application_name.empty() && o.application_name != application_name) continue;
    return o.strategy;
  }
  return strategy;
}

bool IsLoopbackHost(const std::string& host) {
  if (host == "localhost") return true;
  unsigned char address[16];
  if (inet_pton(AF_INET, host.c_str(), address) == 1) return address[0] == 127;
  static constexpr unsigned char kV6Loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return inet_pton(AF_INET6, host.c_str(), address) == 1 &&
         std::memcmp(address, kV6Loopback, sizeof kV6Loopback) == 0;
}

int Config::FindNode(std::string_view name) const {
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!nodes[i].removed && nodes[i].name == name) return static_cast<int>(i);
  }
  return -1;
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
