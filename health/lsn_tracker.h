// LsnTracker: WAL positions fresh enough for the consistency strategies (read-your-writes,
// quorum), on top of the health monitor's periodic ones.
//
// Primary: the primary's WAL LSN read *after* a given moment (a session's commit completed, a
// quorum read arrived). At most one probe is in flight; every request made before a probe was
// sent is answered by that probe, so N concurrent commits or reads cost one round trip to the
// primary, not N. The probe also confirms the node is still primary (not in recovery).
//
// Replicas: replay LSNs probed on demand while a read waits for a replica to catch up. One round
// (all replicas, concurrently) at a time; requests made meanwhile share the next round.
//
// Its own thread and io_context; libpq non-blocking (PgConnection). The request functions and
// the getters are thread-safe; results reach the requester through asio::post on the executor
// it passed. Getters are lock-free (atomics); requests take a mutex briefly.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

#include "config/config.h"
#include "health/monitor.h"

namespace pgrelay::health {

class LsnTracker {
 public:
  using Clock = std::chrono::steady_clock;
  // lsn 0: no answer (no primary known, the probe failed or timed out, the node is in recovery).
  using PrimaryCallback = std::function<void(uint64_t lsn)>;
  using ReplayCallback = std::function<void()>;

  LsnTracker(std::shared_ptr<const config::Config> config, const Monitor* monitor);
  ~LsnTracker();  // Stop()s
  LsnTracker(const LsnTracker&) = delete;
  LsnTracker& operator=(const LsnTracker&) = delete;

  void Start();
  // Ends every probe and joins the thread; pending requests are dropped (their callbacks never
  // run). Idempotent.
  void Stop();
  // Config reload: later probes use the new credentials and timeouts.
  void Reconfigure(std::shared_ptr<const config::Config> config);

  // The primary's WAL LSN from the newest successful probe, if that probe was sent at or after
  // `since`; else 0.
  uint64_t PrimaryLsnSince(Clock::time_point since) const;
  // Asks for a primary probe sent at or after `since`. `done(lsn)` is posted to `executor` when
  // one returns (within health.timeout).
  void RequestPrimaryLsn(Clock::time_point since, const boost::asio::any_io_executor& executor,
                         PrimaryCallback done);

  // The newest replay LSN an on-demand probe saw on node i (config order); 0 if none yet.
  // Combine with the monitor's snapshot (take the larger).
  uint64_t ReplayLsn(size_t i) const;
  // When the probe that last answered on node i was sent; {} if none. An answer sent after a
  // moment proves the node had replayed ReplayLsn(i) at least by then.
  Clock::time_point ReplayAnsweredSince(size_t i) const;
  // Asks for a round of replay-LSN probes on the replicas; `done` is posted to `executor` when
  // the round has ended (every replica answered or timed out).
  void RequestReplayLsns(const boost::asio::any_io_executor& executor, ReplayCallback done);

  // Probes sent so far (for tests and metrics).
  uint64_t primary_probes() const { return primary_probes_.load(std::memory_order_relaxed); }
  uint64_t replay_rounds() const { return replay_rounds_.load(std::memory_order_relaxed); }

 private:
  class Impl;

  std::atomic<uint64_t> primary_lsn_{0};
  std::atomic<int64_t> primary_sent_{0};  // Clock ticks when the probe that read it was sent
  std::unique_ptr<std::atomic<uint64_t>[]> replay_;
  std::unique_ptr<std::atomic<int64_t>[]> replay_at_;  // Clock ticks
  std::atomic<uint64_t> primary_probes_{0};
  std::atomic<uint64_t> replay_rounds_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgrelay::health
