#include "health/lsn_tracker.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "config/log.h"
#include "health/pg_connection.h"
#include "health/probe_sample.h"

namespace pgrelay::health {

namespace asio = boost::asio;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
// After a failed primary probe, the next one waits this long (no busy loop against a dead node).
constexpr auto kRetryDelay = std::chrono::milliseconds(20);

// NULL on a node in recovery: the answer then says "not the primary".
constexpr const char* kPrimarySql =
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END";
constexpr const char* kReplaySql = "SELECT pg_last_wal_replay_lsn()";

void RethrowOnError(std::exception_ptr e) {
  if (e) std::rethrow_exception(e);
}

int64_t Ticks(LsnTracker::Clock::time_point t) { return t.time_since_epoch().count(); }

// The single LSN a one-row, one-column answer holds; 0 if none.
uint64_t LsnOf(const PgResult& result) {
  if (result.rows.size() != 1 || result.rows[0].size() != 1 || !result.rows[0][0]) return 0;
  return ParseLsn(*result.rows[0][0]).value_or(0);
}

}  // namespace

class LsnTracker::Impl {
 public:
  Impl(LsnTracker* owner, std::shared_ptr<const config::Config> config, const Monitor* monitor)
      : owner_(owner), config_(std::move(config)), monitor_(monitor) {
    replicas_.resize(config::kMaxNodes);
    replica_targets_.resize(config::kMaxNodes);
  }

  // Config reload: new credentials and timeouts; every connection is opened afresh.
  void Reconfigure(std::shared_ptr<const config::Config> next) {
    asio::post(io_, [this, next = std::move(next)] {
      config_ = next;
      primary_target_.clear();
      for (std::string& t : replica_targets_) t.clear();  // Ask() reconnects on a new target
    });
  }

  void Start() {
    if (thread_.joinable()) return;
    work_.emplace(io_.get_executor());
    thread_ = std::thread([this] {
      NameThisThread("pgrelay-lsn");
      io_.run();
    });
  }

  void Stop() {
    if (!thread_.joinable()) return;
    asio::post(io_, [this] {
      stopping_ = true;
      primary_.Cancel();
      for (auto& c : replicas_) {
        if (c) c->Cancel();
      }
      retry_.cancel();
      work_.reset();
    });
    thread_.join();
    primary_.Close();
    for (auto& c : replicas_) {
      if (c) c->Close();
    }
  }

  void RequestPrimary(Clock::time_point since, const asio::any_io_executor& executor,
                      PrimaryCallback done) {
    {
      std::lock_guard lock(mu_);
      primary_waiters_.push_back(PrimaryWaiter{Ticks(since), executor, std::move(done)});
    }
    if (!primary_kicked_.exchange(true)) asio::post(io_, [this] { KickPrimary(); });
  }

  void RequestReplay(const asio::any_io_executor& executor, ReplayCallback done) {
    {
      std::lock_guard lock(mu_);
      replay_waiters_.push_back(ReplayWaiter{executor, std::move(done)});
    }
    if (!replay_kicked_.exchange(true)) asio::post(io_, [this] { KickReplay(); });
  }

 private:
  struct PrimaryWaiter {
    int64_t since;
    asio::any_io_executor executor;
    PrimaryCallback done;
  };
  struct ReplayWaiter {
    asio::any_io_executor executor;
    ReplayCallback done;
  };

  PgConnectParams ParamsFor(const NodeStatus& node) const {
    const config::BackendCredentials creds = config_->MonitorCredentials();
    return NodeConnectParams(node.host, node.port, creds.user, creds.password,
                             config_->health.database, "pgrelay-lsn", config_->backend_tls);
  }

  // Runs `sql` on `conn` against `node`, (re)connecting as needed; the answer's LSN or 0.
  asio::awaitable<uint64_t> Ask(PgConnection& conn, std::string& target, const NodeStatus& node,
                                const char* sql) {
    const Clock::time_point deadline = Clock::now() + config_->health.timeout;
    const std::string where = node.host + ":" + std::to_string(node.port);
    if (target != where) {
      conn.Close();
      target = where;
    }
    const bool reused = conn.connected();
    const PgConnectParams params = ParamsFor(node);
    if (!reused && !co_await conn.Connect(params, deadline)) co_return 0;
    PgResult result;
    bool ok = co_await conn.Query(sql, deadline, &result);
    if (!ok && reused && !conn.connected() && !conn.timed_out() && !conn.cancelled()) {
      // The kept-open connection had broken since the last use: try once on a new one.
      if (!co_await conn.Connect(params, deadline)) co_return 0;
      ok = co_await conn.Query(sql, deadline, &result);
    }
    co_return ok ? LsnOf(result) : 0;
  }

  void KickPrimary() {
    primary_kicked_ = false;
    if (primary_running_ || stopping_) return;
    primary_running_ = true;
    asio::co_spawn(io_, PrimaryLoop(), RethrowOnError);
  }

  asio::awaitable<void> PrimaryLoop() {
    std::vector<PrimaryWaiter> ready;
    while (!stopping_) {
      {
        std::lock_guard lock(mu_);
        if (primary_waiters_.empty()) break;
      }
      const Clock::time_point sent = Clock::now();
      uint64_t lsn = 0;
      auto topology = monitor_->Snapshot();
      if (const NodeStatus* primary = topology->Primary()) {
        owner_->primary_probes_.fetch_add(1, std::memory_order_relaxed);
        lsn = co_await Ask(primary_, primary_target_, *primary, kPrimarySql);
      }
      if (stopping_) break;
      if (lsn != 0) {
        // LSN first, then the time: a reader that sees this time sees this LSN or a newer one.
        owner_->primary_lsn_.store(lsn, std::memory_order_release);
        owner_->primary_sent_.store(Ticks(sent), std::memory_order_release);
      }
      ready.clear();
      {
        std::lock_guard lock(mu_);
        auto keep = primary_waiters_.begin();
        for (auto it = primary_waiters_.begin(); it != primary_waiters_.end(); ++it) {
          if (it->since <= Ticks(sent)) {
            ready.push_back(std::move(*it));
          } else {
            if (keep != it) *keep = std::move(*it);
            ++keep;
          }
        }
        primary_waiters_.erase(keep, primary_waiters_.end());
      }
      for (PrimaryWaiter& w : ready) {
        asio::post(w.executor, [done = std::move(w.done), lsn] { done(lsn); });
      }
      if (lsn == 0 && !stopping_) {
        retry_.expires_after(kRetryDelay);
        co_await retry_.async_wait(kNoThrow);
      }
    }
    primary_running_ = false;
  }

  void KickReplay() {
    replay_kicked_ = false;
    if (replay_running_ || stopping_) return;
    StartReplayRound();
  }

  void StartReplayRound() {
    {
      std::lock_guard lock(mu_);
      if (replay_waiters_.empty()) return;
      round_waiters_.swap(replay_waiters_);
    }
    replay_running_ = true;
    owner_->replay_rounds_.fetch_add(1, std::memory_order_relaxed);
    auto topology = monitor_->Snapshot();
    round_outstanding_ = 1;  // held until every probe is spawned
    for (int i : topology->replicas) {
      if (static_cast<size_t>(i) >= replicas_.size()) continue;
      if (!replicas_[i]) replicas_[i] = std::make_unique<PgConnection>(io_.get_executor());
      ++round_outstanding_;
      asio::co_spawn(io_, ProbeReplica(static_cast<size_t>(i), topology->nodes[i]), RethrowOnError);
    }
    ReplicaDone();
  }

  asio::awaitable<void> ProbeReplica(size_t i, NodeStatus node) {
    const int64_t sent = Ticks(Clock::now());
    const uint64_t lsn = co_await Ask(*replicas_[i], replica_targets_[i], node, kReplaySql);
    if (lsn != 0) {
      std::atomic<uint64_t>& slot = owner_->replay_[i];
      uint64_t old = slot.load(std::memory_order_relaxed);
      while (lsn > old && !slot.compare_exchange_weak(old, lsn, std::memory_order_release)) {
      }
      owner_->replay_at_[i].store(sent, std::memory_order_release);
    }
    ReplicaDone();
  }

  void ReplicaDone() {
    if (--round_outstanding_ > 0) return;
    for (ReplayWaiter& w : round_waiters_) asio::post(w.executor, std::move(w.done));
    round_waiters_.clear();
    replay_running_ = false;
    if (!stopping_) StartReplayRound();  // requests that came during the round
  }

  LsnTracker* const owner_;
  std::shared_ptr<const config::Config> config_;  // the tracker's thread only (Reconfigure)
  const Monitor* const monitor_;
  asio::io_context io_{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  PgConnection primary_{io_.get_executor()};
  std::string primary_target_;
  std::vector<std::unique_ptr<PgConnection>> replicas_;
  std::vector<std::string> replica_targets_;
  asio::steady_timer retry_{io_};
  std::thread thread_;

  // Thread-owned state (the tracker's thread only).
  bool stopping_ = false;
  bool primary_running_ = false;
  bool replay_running_ = false;
  int round_outstanding_ = 0;
  std::vector<ReplayWaiter> round_waiters_;

  // Shared with requesters.
  std::mutex mu_;
  std::vector<PrimaryWaiter> primary_waiters_;
  std::vector<ReplayWaiter> replay_waiters_;
  std::atomic<bool> primary_kicked_{false};
  std::atomic<bool> replay_kicked_{false};
};

LsnTracker::LsnTracker(std::shared_ptr<const config::Config> config, const Monitor* monitor)
    : replay_(std::make_unique<std::atomic<uint64_t>[]>(config::kMaxNodes)),
      replay_at_(std::make_unique<std::atomic<int64_t>[]>(config::kMaxNodes)),
      impl_(std::make_unique<Impl>(this, std::move(config), monitor)) {}

LsnTracker::~LsnTracker() { Stop(); }

void LsnTracker::Start() { impl_->Start(); }

void LsnTracker::Stop() { impl_->Stop(); }

void LsnTracker::Reconfigure(std::shared_ptr<const config::Config> config) {
  impl_->Reconfigure(std::move(config));
}

uint64_t LsnTracker::PrimaryLsnSince(Clock::time_point since) const {
  if (primary_sent_.load(std::memory_order_acquire) < Ticks(since)) return 0;
  return primary_lsn_.load(std::memory_order_acquire);
}

void LsnTracker::RequestPrimaryLsn(Clock::time_point since,
                                   const boost::asio::any_io_executor& executor,
                                   PrimaryCallback done) {
  impl_->RequestPrimary(since, executor, std::move(done));
}

uint64_t LsnTracker::ReplayLsn(size_t i) const {
  return replay_[i].load(std::memory_order_acquire);
}

LsnTracker::Clock::time_point LsnTracker::ReplayAnsweredSince(size_t i) const {
  return Clock::time_point(Clock::duration(replay_at_[i].load(std::memory_order_acquire)));
}

void LsnTracker::RequestReplayLsns(const boost::asio::any_io_executor& executor,
                                   ReplayCallback done) {
  impl_->RequestReplay(executor, std::move(done));
}

}  // namespace pgrelay::health
