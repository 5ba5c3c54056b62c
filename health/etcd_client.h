// EtcdClient: a blocking etcd v3 client over etcd's HTTP/JSON gateway (/v3/..., etcd 3.4): key
// ranges, puts, deletes, transactions, leases and watches, with endpoint failover and optional
// user/password authentication. Used by one thread at a time (pgrelay's coordination thread);
// not thread-safe. Every call but Watch returns within options.request_timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::health {

struct EtcdOptions {
  // "host:port" (an "http://" prefix is accepted; IPv6 as "[::1]:2379"). Host names are resolved
  // with getaddrinfo on each new connection: Asio cannot interrupt a resolution already running,
  // so use IP addresses where the timeout must hold strictly.
  std::vector<std::string> endpoints;
  // Bounds a whole call, endpoint failover and re-authentication included. The endpoints still
  // to try share what is left equally, so one endpoint that never answers cannot use it all.
  std::chrono::milliseconds request_timeout{2000};
  std::string username;  // empty: no authentication
  std::string password;  // never logged nor put into an error string
};

struct EtcdKeyValue {
  std::string key;  // bytes
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;  // 1 when created, +1 per put
  int64_t lease = 0;    // 0: none

  bool operator==(const EtcdKeyValue&) const = default;
};

struct EtcdRangeResult {
  int64_t revision = 0;           // the store's revision when read
  std::vector<EtcdKeyValue> kvs;  // sorted by key; empty when nothing matched
};

struct EtcdPutResult {
  int64_t revision = 0;  // the put's revision
};

struct EtcdDeleteResult {
  int64_t revision = 0;
  int64_t deleted = 0;  // keys deleted
};

// One comparison of a transaction: `target` of `key` `relation` the operand. A key that does not
// exist has create_revision, mod_revision and version 0 (and compares with kValue fail).
struct EtcdCompare {
  enum class Target { kCreateRevision, kModRevision, kVersion, kValue };
  enum class Relation { kEqual, kGreater, kLess, kNotEqual };

  std::string key;
  Target target = Target::kCreateRevision;
  Relation relation = Relation::kEqual;
  int64_t number = 0;  // the revision or version (every target but kValue)
  std::string value;   // kValue

  static EtcdCompare CreateRevision(std::string key, Relation relation, int64_t revision);
  static EtcdCompare ModRevision(std::string key, Relation relation, int64_t revision);
  static EtcdCompare Version(std::string key, Relation relation, int64_t version);
  static EtcdCompare Value(std::string key, Relation relation, std::string value);
};

// One operation of a transaction branch.
struct EtcdOp {
  enum class Type { kPut, kRange, kDelete };

  Type type = Type::kRange;
  std::string key;
  std::string value;    // kPut
  int64_t lease = 0;    // kPut; 0: none
  bool prefix = false;  // kRange, kDelete: every key that starts with `key`

  static EtcdOp Put(std::string key, std::string value, int64_t lease = 0);
  static EtcdOp Range(std::string key);
  static EtcdOp RangePrefix(std::string prefix);
  static EtcdOp Delete(std::string key);
  static EtcdOp DeletePrefix(std::string prefix);
};

struct EtcdTxn {
  std::vector<EtcdCompare> compare;  // all must hold for `success` to run
  std::vector<EtcdOp> success;
  std::vector<EtcdOp> failure;
};

struct EtcdOpResponse {
  EtcdOp::Type type = EtcdOp::Type::kRange;
  std::vector<EtcdKeyValue> kvs;  // kRange
  int64_t deleted = 0;            // kDelete
};

struct EtcdTxnResult {
  int64_t revision = 0;
  bool succeeded = false;                 // the compares held: `success` ran, else `failure`
  std::vector<EtcdOpResponse> responses;  // one per operation of the branch that ran
};

struct EtcdLease {
  int64_t id = 0;
  int64_t ttl = 0;  // seconds
};

struct EtcdWatchEvent {
  enum class Type { kPut, kDelete };

  Type type = Type::kPut;
  EtcdKeyValue kv;  // kDelete: the key and the deletion's revision (mod_revision) only
};

// Where a watch got to when Watch returned.
struct EtcdWatchEnd {
  // Watch again from this revision to miss nothing: the last delivered event's revision + 1 (or
  // the start revision; with start revision 0, the revision the watch started after + 1).
  int64_t resume_revision = 0;
  // > 0: the start revision had been compacted away (etcd keeps no history before this one):
  // read the keys again, then watch from after that read's revision.
  int64_t compact_revision = 0;
  bool canceled = false;  // etcd canceled the watch (compaction, permissions, authentication)
  std::string cancel_reason;
};

// Called with the events of one watch response, in revision order (a transaction's events come
// together).
using EtcdWatchCallback = std::function<void(const std::vector<EtcdWatchEvent>& events)>;

class EtcdClient {
 public:
  explicit EtcdClient(EtcdOptions options);
  ~EtcdClient();
  EtcdClient(EtcdClient&&) noexcept;
  EtcdClient& operator=(EtcdClient&&) noexcept;
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // Each call returns nullopt (or false) with *error on failure. A failure to connect, an I/O
  // error, a timeout or an HTTP 5xx moves on to the next endpoint (round robin, each endpoint
  // at most once per call); *error then names every endpoint tried and why. Caution: a
  // mutation whose response was lost may have been applied before the retry on the next
  // endpoint (a retried Txn may then report succeeded = false for its own change): read again
  // when in doubt.
  std::optional<EtcdRangeResult> Range(const std::string& key, std::string* error);
  std::optional<EtcdRangeResult> RangePrefix(const std::string& prefix, std::string* error);
  std::optional<EtcdPutResult> Put(const std::string& key, const std::string& value,
                                   int64_t lease_id, std::string* error);
  std::optional<EtcdDeleteResult> Delete(const std::string& key, std::string* error);
  std::optional<EtcdTxnResult> Txn(const EtcdTxn& txn, std::string* error);

  std::optional<EtcdLease> LeaseGrant(int64_t ttl_seconds, std::string* error);
  // The lease's remaining TTL in seconds after the refresh; 0 if the lease is gone.
  std::optional<int64_t> LeaseKeepAliveOnce(int64_t lease_id, std::string* error);
  // True if the lease is gone afterwards (also when it was already gone). Its keys are deleted.
  bool LeaseRevoke(int64_t lease_id, std::string* error);

  // Watches `key` (every key starting with it if `prefix`) from `start_revision` (0: from now)
  // on a connection of its own, calling `on_events` for each response with events. Polls
  // `stop` at least every 200 ms and after each callback. Returns true when `stop` returned
  // true; false with *error when the stream failed, ended or etcd canceled the watch (*end tells
  // why and where to resume; may be null). Connecting is bounded by request_timeout; a watch
  // that sees no events waits for them indefinitely (TCP keepalive detects a vanished peer).
  // `on_events` runs on the calling thread and may use this client.
  bool Watch(const std::string& key, bool prefix, int64_t start_revision,
             const EtcdWatchCallback& on_events, const std::function<bool()>& stop,
             EtcdWatchEnd* end, std::string* error);

  // The endpoint the next call tries first.
  const std::string& CurrentEndpoint() const;

 private:
  struct Impl;  // keeps Beast out of this header
  std::unique_ptr<Impl> impl_;
};

// "host:port", "http://host:port" or "[v6]:port" -> host and port; false with *error otherwise.
bool ParseEtcdEndpoint(std::string_view text, std::string* host, std::string* port,
                       std::string* error);

// The range end that makes a range or watch cover every key starting with `prefix` (the prefix
// with its last byte below 0xff incremented; "\0", meaning every key, for "" or all 0xff bytes).
std::string EtcdPrefixEnd(std::string_view prefix);

}  // namespace pgrelay::health
