// The validated, immutable pgrelay configuration. Built once by LoadConfig
// (config_loader.h) and shared as std::shared_ptr<const Config>; immutable, share freely.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::config {

struct Endpoint {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string ToString() const;  // "host:port"

  bool operator==(const Endpoint&) const = default;
};

// Node indexes are slots, stable for the life of the process: a reload that removes a node keeps
// its slot (marked `removed`: never probed, never routed to) and a node added by a reload gets a
// new slot at the end (or its old slot back, if it returns with the same name and address).
// Every per-node table (topology, metrics, in-flight counts) has room for kMaxNodes slots.
inline constexpr size_t kMaxNodes = 64;

struct NodeConfig {
  std::string name;
  std::string host;
  uint16_t port = 5432;
  int weight = 1;        // load-balancing weight for reads (>= 0; 0 = never a read target)
  bool removed = false;  // a slot a reload took out of the configuration (see kMaxNodes)

  bool operator==(const NodeConfig&) const = default;
};

// A user clients may log in as. The password is already resolved from
// password / password_env / password_file at load time.
struct UserConfig {
  std::string name;
  std::string password;

  bool operator==(const UserConfig&) const = default;
};

enum class AuthMethod { kScramSha256, kMd5, kTrust };
enum class Strategy { kLeader, kFollower, kReadYourWrites, kQuorum };
enum class LogLevel { kDebug, kInfo, kWarning, kError };
enum class LoadBalance { kRoundRobin, kLeastConnections, kRandom };
// routing.replica_affinity: whether a session's reads stay on one replica.
enum class ReplicaAffinity { kNone, kSession };
enum class Route { kPrimary, kReplica };
// pool.mode: off, or session (a server connection serves one client session at a time and
// outlives it, reset with DISCARD ALL, like PgBouncer's pool_mode = session).
enum class PoolMode { kOff, kSession };
enum class FailoverMode { kOff, kManual, kAuto };
enum class TlsMode { kDisable, kAllow, kRequire };
// backend.tls, with libpq's sslmode meanings.
enum class BackendTlsMode { kDisable, kPrefer, kRequire, kVerifyCa, kVerifyFull };

std::string_view ToString(AuthMethod m);  // "scram-sha-256" | "md5" | "trust"
std::string_view ToString(Strategy s);    // "leader" | "follower" | "read-your-writes" | "quorum"
std::string_view ToString(LogLevel l);
std::string_view ToString(ReplicaAffinity a);  // "none" | "session"
std::string_view ToString(PoolMode m);         // "off" | "session"
std::string_view ToString(LoadBalance b);   // "round_robin" | "least_connections" | "random"    //
                                            // "debug" | "info" | "warning" | "error"
std::string_view ToString(Route r);         // "primary" | "replica"
std::string_view ToString(FailoverMode m);  // "off" | "manual" | "auto"
std::string_view ToString(TlsMode m);       // "disable" | "allow" | "require"
// "disable" | "prefer" | "require" | "verify-ca" | "verify-full"
std::string_view ToString(BackendTlsMode m);

// Credentials pgrelay uses toward the PostgreSQL nodes.
struct BackendCredentials {
  std::string user;
  std::string password;  // resolved like UserConfig::password; may be empty (trust)

  bool operator==(const BackendCredentials&) const = default;
};

struct Limits {
  int max_client_connections = 1000;
  uint32_t max_message_size = 64u << 20;             // bytes; client messages larger -> 54000
  std::chrono::milliseconds startup_timeout{10000};  // startup packet + authentication
  std::chrono::milliseconds connect_timeout{5000};   // backend connect + backend auth
  std::chrono::milliseconds client_idle_timeout{0};  // 0 = off

  bool operator==(const Limits&) const = default;
};

// pool: server connections kept for the next session after their client leaves (docs/pool.md).
struct PoolConfig {
  PoolMode mode = PoolMode::kOff;
  std::chrono::milliseconds idle_timeout{60000};  // a parked connection unused this long closes
  int max_idle = 50;  // parked connections per node and worker; more are closed

  bool operator==(const PoolConfig&) const = default;
};

struct HealthConfig {
  std::chrono::milliseconds interval{500};  // one probe per node per interval
  std::chrono::milliseconds timeout{3000};  // bound on one probe (connect + query)
  std::string database = "postgres";
  int failure_threshold = 3;   // consecutive failed probes until a node is down (1 = suspect)
  int recovery_threshold = 2;  // consecutive good probes until a down node is up again

  bool operator==(const HealthConfig&) const = default;
};

// failover: what pgrelay does when the primary fails (docs/failover.md).
struct FailoverConfig {
  // off: follow role changes made outside pgrelay only; manual: promote on an admin request;
  // auto: promote when the primary has failed.
  FailoverMode mode = FailoverMode::kOff;
  // Who promotes and re-points (pg_promote, ALTER SYSTEM, replication slots): a superuser or a
  // role granted those. Unset: the health probes' credentials.
  std::optional<BackendCredentials> control;
  std::chrono::milliseconds hold_writes{5000};       // writes wait this long for a primary
  std::chrono::milliseconds promote_timeout{30000};  // replay + pg_promote on the candidate
  uint64_t max_lag_bytes = 0;  // refuse a candidate further behind than this; 0 = no bound
  // The epoch record (ClusterStateStore). Empty: kept in memory only (lost on restart).
  std::string state_file;
  // failover.hooks: shell commands with placeholders {failed} {failed_host} {failed_port}
  // {candidate} {candidate_host} {candidate_port} {epoch}. before_promote runs first (e.g.
  // fencing the old primary's host); if it fails, nothing is promoted (retried later).
  // after_promote runs once the new primary is recorded and the replicas re-pointed (e.g.
  // rejoining the old primary as a replica).
  std::string before_promote;
  std::string after_promote;
  std::chrono::milliseconds hook_timeout{30000};

  bool operator==(const FailoverConfig&) const = default;
};

// coordination.etcd: several pgrelay instances agree through etcd (docs/coordination.md).
struct EtcdConfig {
  std::vector<Endpoint> endpoints;          // etcd client URLs as host:port, tried in turn
  std::string prefix = "/pgrelay/main";     // this cluster's keys live under it
  std::chrono::seconds lease_ttl{5};        // membership and coordinator leases
  std::chrono::milliseconds timeout{1000};  // per etcd request, failover between endpoints included
  std::string user;                         // empty: etcd without authentication
  std::string password;                     // never log it

  bool operator==(const EtcdConfig&) const = default;
};

struct CoordinationConfig {
  std::optional<EtcdConfig> etcd;  // unset: one pgrelay, the failover record in state_file
  // This instance's name among the members: coordination.member, default "<hostname>:<port of
  // listen>".
  std::string member;

  bool operator==(const CoordinationConfig&) const = default;
};

// tls: TLS toward clients. disable: SSLRequest answered 'N'; allow: TLS for clients that ask;
// require: clients that do not use TLS are refused (28000). The files are PEM; relative paths
// are relative to the config file; they are read at start-up and on every reload.
struct TlsConfig {
  TlsMode mode = TlsMode::kDisable;  // default: allow when cert_file and key_file are set
  std::string cert_file;             // certificate chain, server certificate first
  std::string key_file;

  bool operator==(const TlsConfig&) const = default;
};

// backend.tls / ca_file / cert_file / key_file: TLS from pgrelay to the nodes, for the
// sessions' connections and the health, LSN and catalog probes (libpq) alike.
struct BackendTlsConfig {
  BackendTlsMode mode = BackendTlsMode::kPrefer;  // libpq's default
  std::string ca_file;    // verify-ca / verify-full: the CA the nodes' certificates chain to
  std::string cert_file;  // optional client certificate (with key_file)
  std::string key_file;

  bool operator==(const BackendTlsConfig&) const = default;
};

// An ordered routing rule (routing.rules): the first rule whose regular expression matches
// anywhere in a statement's SQL text sends it to `route`, unless a comment hint in the statement
// says otherwise. Boost.Regex Perl syntax; a leading (?i) makes it case-insensitive.
struct RoutingRule {
  std::string match;
  Route route = Route::kPrimary;

  bool operator==(const RoutingRule&) const = default;
};

// routing.overrides: a session whose database, user and application_name (at connect time)
// match every field that is set uses `strategy` instead of routing.strategy. First match wins.
struct StrategyOverride {
  std::string database;          // empty: any
  std::string user;              // empty: any
  std::string application_name;  // empty: any
  Strategy strategy = Strategy::kLeader;

  bool operator==(const StrategyOverride&) const = default;
};

// A loopback IP address (127.0.0.0/8, ::1) or "localhost"; no name resolution.
bool IsLoopbackHost(const std::string& host);

// Function names are "name" (any schema) or "schema.name", as stored in pg_proc.
std::vector<std::string> DefaultSideEffectFreeFunctions();
std::vector<std::string> DefaultPrimaryFunctions();

// Statement classification settings (the `routing:` section besides `strategy`).
struct RoutingConfig {
  std::vector<RoutingRule> rules;
  // Volatile functions without side effects: a SELECT calling them may still go to a replica.
  std::vector<std::string> side_effect_free_functions = DefaultSideEffectFreeFunctions();
  // Functions that always send their statement to the primary, whatever their volatility.
  std::vector<std::string> primary_functions = DefaultPrimaryFunctions();
  size_t classifier_cache_size = 10000;  // statements per worker; 0 = no cache
  // Read routing (follower and the consistency strategies).
  LoadBalance load_balance = LoadBalance::kRoundRobin;
  // none: every read is balanced anew; session: a session's reads stay on the replica its first
  // read got, while that replica stays eligible (as Pgpool-II does; its caches stay warm).
  ReplicaAffinity replica_affinity = ReplicaAffinity::kNone;
  // false: a session that may read from replicas opens its replica connections in the
  // background right after login (the replica its reads will use, or every eligible one without
  // affinity), as Pgpool-II and MaxScale do, so its first read does not wait for a login.
  // true: a replica connection opens when a read first goes there (MaxScale's lazy_connect).
  bool lazy_connect = false;
  uint64_t max_lag_bytes = 16u << 20;  // replicas further behind get no reads; 0 = no bound
  // The same in time; 0 = no bound (the default: replay-time lag is an estimate that reads
  // high after idle periods, so the byte bound is the reliable one).
  std::chrono::milliseconds max_lag{0};
  bool fallback_to_primary = true;  // no eligible replica: read on the primary
  // Consistency strategies: how long a read may wait for a replica to replay what it must see
  // before it goes to the primary (routing.ryw.max_wait, routing.quorum.max_wait; 0 = no wait).
  std::chrono::milliseconds ryw_max_wait{20};
  std::chrono::milliseconds quorum_max_wait{20};
  std::vector<StrategyOverride> overrides;

  bool operator==(const RoutingConfig&) const = default;
};

struct Config {
  Endpoint listen{"127.0.0.1", 6432};
  int workers = 0;  // 0 = automatic: see proxy::Server::WorkerCount
  std::vector<NodeConfig> nodes;
  std::vector<UserConfig> users;
  AuthMethod auth = AuthMethod::kScramSha256;
  std::optional<BackendCredentials> backend;  // unset: each client's own credentials
  BackendTlsConfig backend_tls;
  Strategy strategy = Strategy::kLeader;
  RoutingConfig routing;
  Endpoint admin_listen{"127.0.0.1", 9187};
  // Bearer token the admin endpoints that change state require (admin.token / admin.token_env);
  // empty = none, allowed only with a loopback admin_listen. Never log it.
  std::string admin_token;
  TlsConfig tls;
  Limits limits;
  PoolConfig pool;
  HealthConfig health;
  FailoverConfig failover;
  CoordinationConfig coordination;
  LogLevel log_level = LogLevel::kInfo;

  const UserConfig* FindUser(std::string_view name) const;  // nullptr if unknown
  // The index of the node named `name` that is not removed; -1 if none.
  int FindNode(std::string_view name) const;
  // The strategy for a session: the first matching routing.overrides entry, else `strategy`.
  Strategy StrategyFor(std::string_view database, std::string_view user,
                       std::string_view application_name) const;
  // Credentials for the health monitor: `backend` if set, else the first user; empty if neither
  // (only possible with auth: trust and no users).
  BackendCredentials MonitorCredentials() const;
};

}  // namespace pgrelay::config
