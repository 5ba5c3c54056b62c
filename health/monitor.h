// Monitor: probes every configured node each health.interval and publishes Topology snapshots
// (roles, state with hysteresis, LSNs, lag). Runs its own io_context on its own thread: libpq
// non-blocking inside Asio, one connection per node, probes of different nodes concurrent.
// Start/Stop from one thread; Snapshot() is thread-safe and lock-free for readers.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "config/config.h"
#include "health/topology.h"

namespace pgrelay::health {

class Monitor {
 public:
  explicit Monitor(std::shared_ptr<const config::Config> config);
  ~Monitor();  // Stop()s
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Starts the monitor thread and returns once the first probe round is published (at most one
  // health.interval: a node that has not answered by then is published as down).
  void Start();
  // Ends every probe, closes the monitoring connections and joins the thread. Snapshot() stays
  // valid (the last topology). Idempotent.
  void Stop();

  // Planned switchover to replica `target` (failover.mode manual or auto): waits until no
  // client statement is active on the primary, runs failover.hooks.before_promote to stop it,
  // promotes the target once it has replayed everything, records the new epoch, re-points the
  // other replicas, runs after_promote. Blocks the caller (any thread but the monitor's) until
  // done or `timeout`; returns a description of what happened, and whether it succeeded. The
  // caller holds new statements meanwhile (PauseGate).
  std::pair<bool, std::string> Switchover(const std::string& target,
                                          std::chrono::milliseconds timeout);

  // Config reload: adopts `config` on the monitor's thread (node slots added or removed, health
  // timings and thresholds, credentials, failover settings) and publishes a topology with the
  // new node list. Blocks until applied or `timeout`; false on timeout.
  bool Reconfigure(std::shared_ptr<const config::Config> config, std::chrono::milliseconds timeout);

  // Asked before every automatic promotion (failover.mode auto), on the monitor's thread, with
  // the failed primary's name and the current epoch: the promotion goes ahead only if it
  // returns true (else *why_not is logged when it changes). coordination.etcd sets it to the
  // coordinator's MayPromote. Set before Start().
  using PromotionGate =
      std::function<bool(const std::string& failed, uint64_t epoch, std::string* why_not)>;
  void SetPromotionGate(PromotionGate gate);

  std::shared_ptr<const Topology> Snapshot() const {
    return snapshot_.load(std::memory_order_acquire);
  }
  // The version of the newest snapshot (Topology::version), stored after it: a worker compares
  // it with the version it holds (one load of memory written twice a second) and fetches the
  // snapshot only when it changed.
  uint64_t Version() const { return version_.load(std::memory_order_acquire); }

 private:
  class Impl;  // keeps Asio and libpq out of this header (included by the proxy)

  std::atomic<std::shared_ptr<const Topology>> snapshot_;
  std::atomic<uint64_t> version_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgrelay::health
