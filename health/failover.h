// Automatic failover (failover.mode auto): deciding that the primary has failed and which
// replica to promote (PlanPromotion, pure), promoting it (Promote) and re-pointing the other
// replicas to it (Repoint). The monitor runs these on its own thread, records the new primary
// under a new epoch (ClusterStateStore) before routing writes to it, and fences the old one.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <optional>
#include <string>
#include <string_view>

#include <vector>

#include "config/config.h"
#include "health/pg_connection.h"
#include "health/topology.h"

namespace pgrelay::health {

struct PromotionPlan {
  int failed = -1;     // the recorded primary, declared failed
  int candidate = -1;  // the replica to promote
  uint64_t candidate_lsn = 0;
};

// Whether to promote now, and whom: the recorded primary `recorded` is down (failure_threshold
// failed probes), no other node is primary, and every replica that is up has lost its WAL
// stream too (a primary only pgrelay cannot reach is a network problem, not a failure). The
// candidate is the up replica with the most WAL received (ties: config order), refused if
// failover.max_lag_bytes is set and it is further behind the primary's last known LSN.
// nullopt with *why_not when there is nothing to do or it must not happen (empty when the
// primary is simply fine).
std::optional<PromotionPlan> PlanPromotion(const Topology& topology, int recorded,
                                           const config::Config& config, std::string* why_not);

// Ends a running Promote / Repoint at shutdown: Cancel() makes their pending libpq operation and
// every later one fail at once. Owned by the monitor's thread.
class FailoverCancel {
 public:
  void Cancel() {
    stopped_ = true;
    for (PgConnection* c : live_) c->Cancel();
  }
  bool stopped() const { return stopped_; }
  void Add(PgConnection* c) {
    live_.push_back(c);
    if (stopped_) c->Cancel();
  }
  void Remove(PgConnection* c) { std::erase(live_, c); }

 private:
  bool stopped_ = false;
  std::vector<PgConnection*> live_;
};

struct PromotionResult {
  bool ok = false;
  std::string error;
  uint32_t timeline = 0;  // the new primary's
};

// Lets the candidate replay everything it received (resuming paused replay), then
// pg_promote(wait => true); within failover.promote_timeout.
boost::asio::awaitable<PromotionResult> Promote(const boost::asio::any_io_executor& executor,
                                                const config::Config& config,
                                                const NodeStatus& candidate,
                                                FailoverCancel& cancel);

// Points `replica` at `primary`: its primary_conninfo with host and port replaced (ALTER SYSTEM,
// pg_reload_conf()), after creating its replication slot on the new primary if it uses one.
// Then waits (bounded) until it streams from there. An error message, or empty on success.
boost::asio::awaitable<std::string> Repoint(const boost::asio::any_io_executor& executor,
                                            const config::Config& config,
                                            const NodeStatus& primary, const NodeStatus& replica,
                                            FailoverCancel& cancel);

// The placeholders of failover.hooks for promoting `candidate` in place of `failed` at `epoch`.
std::vector<std::pair<std::string, std::string>> PromotionHookValues(const NodeStatus& failed,
                                                                     const NodeStatus& candidate,
                                                                     uint64_t epoch);

// A libpq conninfo string with host/port replaced (hostaddr dropped), every value re-quoted.
std::string RewriteConninfo(std::string_view conninfo, std::string_view host, uint16_t port);

}  // namespace pgrelay::health
