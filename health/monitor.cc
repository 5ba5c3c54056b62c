#include "health/monitor.h"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "config/log.h"
#include "health/node_probe.h"
#include "health/node_state.h"
#include "health/topology_builder.h"

namespace pgrelay::health {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// Exceptions in the monitor are bugs: let them end the process loudly rather than silently
// stopping the health checks.
void RethrowOnError(std::exception_ptr e) {
  if (e) std::rethrow_exception(e);
}

int64_t Millis(Clock::duration d) { return std::chrono::duration_cast<milliseconds>(d).count(); }

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", s);
  return buf;
}

}  // namespace

class Monitor::Impl {
 public:
  Impl(std::shared_ptr<const config::Config> config,
       std::atomic<std::shared_ptr<const Topology>>* out);

  void Start();
  void Stop();
  std::shared_ptr<const Topology> Initial() const;

 private:
  struct Node {
    const config::NodeConfig* config = nullptr;
    std::unique_ptr<NodeProbe> probe;
    NodeState state;
    bool busy = false;  // a probe is running
    Clock::time_point probe_started{};
  };

  asio::awaitable<void> Run();
  void StartRound(Clock::time_point now);
  asio::awaitable<void> ProbeNode(size_t i, uint64_t round, Clock::time_point deadline);
  void LogTransition(size_t i, const NodeTransition& t) const;
  std::vector<NodeStatus> Statuses() const;
  void Publish();
  void LogTopologyChange(const Topology& t);
  std::string Label(size_t i) const;  // "pg1 (127.0.0.1:5432)"

  const std::shared_ptr<const config::Config> config_;
  std::atomic<std::shared_ptr<const Topology>>* const out_;
  const milliseconds interval_;
  const milliseconds timeout_;
  // Declared before everything that holds Asio objects, so it is destroyed after them.
  asio::io_context io_{1};
  asio::steady_timer tick_{io_};
  std::vector<Node> nodes_;
  uint64_t round_ = 0;
  int outstanding_ = 0;  // probes of the current round still running
  bool published_ = true;
  uint64_t version_ = 0;
  uint64_t epoch_ = 0;  // failover will own this (ClusterStateStore)
  bool stopping_ = false;
  int last_primary_ = -2;  // -2: nothing published yet
  std::vector<int> last_claims_;
  std::thread thread_;

  std::mutex mu_;  // guards first_published_ (Start waits for it)
  std::condition_variable cv_;
  bool first_published_ = false;
};

Monitor::Impl::Impl(std::shared_ptr<const config::Config> config,
                    std::atomic<std::shared_ptr<const Topology>>* out)
    : config_(std::move(config)),
      out_(out),
      interval_(config_->health.interval),
      timeout_(config_->health.timeout) {
  const config::BackendCredentials creds = config_->MonitorCredentials();
  const HealthThresholds thresholds{config_->health.failure_threshold,
                                    config_->health.recovery_threshold};
  nodes_.reserve(config_->nodes.size());
  for (const config::NodeConfig& node : config_->nodes) {
    PgConnectParams params;
    params.host = node.host;
    params.port = node.port;
    params.user = creds.user;
    params.password = creds.password;
    params.dbname = config_->health.database;
    Node& n = nodes_.emplace_back(Node{&node, nullptr, NodeState(thresholds)});
    n.probe = std::make_unique<NodeProbe>(io_.get_executor(), std::move(params));
  }
}

std::string Monitor::Impl::Label(size_t i) const {
  const config::NodeConfig& c = *nodes_[i].config;
  const bool v6 = c.host.find(':') != std::string::npos;
  return c.name + " (" + (v6 ? "[" + c.host + "]" : c.host) + ":" + std::to_string(c.port) + ")";
}

std::vector<NodeStatus> Monitor::Impl::Statuses() const {
  std::vector<NodeStatus> statuses(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    statuses[i].name = nodes_[i].config->name;
    statuses[i].host = nodes_[i].config->host;
    statuses[i].port = nodes_[i].config->port;
    nodes_[i].state.Fill(&statuses[i]);
  }
  return statuses;
}

std::shared_ptr<const Topology> Monitor::Impl::Initial() const {
  return std::make_shared<const Topology>(BuildTopology(Statuses(), 0, epoch_));
}

void Monitor::Impl::Start() {
  if (thread_.joinable() || stopping_) return;
  asio::co_spawn(io_, Run(), RethrowOnError);
  thread_ = std::thread([this] { io_.run(); });
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, interval_ + timeout_ + std::chrono::seconds(1),
               [this] { return first_published_; });
}

void Monitor::Impl::Stop() {
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    stopping_ = true;
    tick_.cancel();
    for (Node& n : nodes_) n.probe->Cancel();
  });
  thread_.join();  // run() returns once every probe coroutine has ended
  for (Node& n : nodes_) n.probe->Close();
}

asio::awaitable<void> Monitor::Impl::Run() {
  Clock::time_point next = Clock::now();
  while (!stopping_) {
    StartRound(Clock::now());  // the tick may fire late: deadlines count from now
    next += interval_;
    const Clock::time_point now = Clock::now();
    if (next <= now) next = now + interval_;  // fell behind (e.g. a stopped process): no burst
    tick_.expires_at(next);
    co_await tick_.async_wait(kNoThrow);
    if (stopping_) break;
    if (!published_) Publish();  // some probe is still running: publish what we know
  }
}

void Monitor::Impl::StartRound(Clock::time_point now) {
  ++round_;
  outstanding_ = 0;
  published_ = false;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    Node& n = nodes_[i];
    if (n.busy) {
      // Never two probes at once on a node: a hung node costs one connection, not one per round.
      LogTransition(
          i, n.state.OnLate("no answer for " + std::to_string(Millis(now - n.probe_started)) +
                                " ms (probe still running)",
                            now));
      continue;
    }
    n.busy = true;
    n.probe_started = now;
    ++outstanding_;
    asio::co_spawn(io_, ProbeNode(i, round_, now + timeout_), RethrowOnError);
  }
  if (outstanding_ == 0) Publish();
}

asio::awaitable<void> Monitor::Impl::ProbeNode(size_t i, uint64_t round,
                                               Clock::time_point deadline) {
  Node& n = nodes_[i];
  const ProbeOutcome outcome = co_await n.probe->Run(deadline, timeout_);
  n.busy = false;
  if (stopping_) co_return;
  const Clock::time_point now = Clock::now();
  LogTransition(i, outcome.ok ? n.state.OnSuccess(outcome.sample, now)
                              : n.state.OnFailure(outcome.error, now));
  // A probe from an earlier round (it ran late) is published with the current round.
  if (round == round_ && --outstanding_ == 0 && !published_) Publish();
}

void Monitor::Impl::LogTransition(size_t i, const NodeTransition& t) const {
  if (!t.counted) return;
  const NodeState& s = nodes_[i].state;
  if (t.first_result) {
    if (t.new_state == NodeHealth::kUp) {
      PGRELAY_LOG(kInfo, "health",
                  "node " << Label(i) << " is up, role " << ToString(t.new_role) << ", timeline "
                          << s.sample().timeline);
    } else {
      PGRELAY_LOG(kWarning, "health", "node " << Label(i) << " is down: " << s.last_error());
    }
    return;
  }
  if (t.StateChanged()) {
    switch (t.new_state) {
      case NodeHealth::kUp:
        PGRELAY_LOG(kInfo, "health",
                    "node " << Label(i) << " is up again (was " << ToString(t.old_state)
                            << "), role " << ToString(t.new_role) << ", timeline "
                            << s.sample().timeline);
        break;
      case NodeHealth::kSuspect:
        PGRELAY_LOG(kWarning, "health",
                    "node " << Label(i) << " is suspect (" << s.consecutive_failures()
                            << " failed probe(s), down after " << config_->health.failure_threshold
                            << "): " << s.last_error());
        break;
      case NodeHealth::kDown:
        PGRELAY_LOG(kWarning, "health",
                    "node " << Label(i) << " is down after " << s.consecutive_failures()
                            << " failed probes: " << s.last_error());
        break;
      case NodeHealth::kFenced:
        PGRELAY_LOG(kWarning, "health", "node " << Label(i) << " is fenced");
        break;
    }
  }
  if (t.RoleChanged()) {
    PGRELAY_LOG(kInfo, "health",
                "node " << Label(i) << " changed role: " << ToString(t.old_role) << " -> "
                        << ToString(t.new_role) << " (state " << ToString(t.new_state)
                        << ", timeline " << s.sample().timeline << ")");
  }
}

void Monitor::Impl::Publish() {
  published_ = true;
  Topology t = BuildTopology(Statuses(), ++version_, epoch_, std::max(last_primary_, -1));
  LogTopologyChange(t);
  if (Log::Enabled(config::LogLevel::kDebug)) {
    // One machine-readable line per round (tests parse it): name{key=value ...} per node.
    std::ostringstream os;
    os << "round " << round_ << " version=" << t.version << " epoch=" << t.epoch
       << " primary=" << (t.primary >= 0 ? t.nodes[t.primary].name : "-")
       << " conflict=" << (t.primary_conflict ? "yes" : "no");
    for (const NodeStatus& n : t.nodes) {
      os << ' ' << n.name << "{state=" << ToString(n.state) << " role=" << ToString(n.role)
         << " up=" << (n.up ? "yes" : "no") << " tli=" << n.timeline;
      if (n.role == NodeRole::kPrimary) os << " lsn=" << FormatLsn(n.current_lsn);
      if (n.role == NodeRole::kReplica) {
        os << " receive=" << FormatLsn(n.receive_lsn) << " replay=" << FormatLsn(n.replay_lsn)
           << " streaming="
           << (n.wal_receiver_streaming ? (*n.wal_receiver_streaming ? "yes" : "no") : "?")
           << " paused=" << (n.replay_paused ? "yes" : "no");
      }
      os << " lag_bytes=" << (n.replay_lag_bytes ? std::to_string(*n.replay_lag_bytes) : "?")
         << " lag_s=" << (n.replay_lag_seconds ? Seconds(*n.replay_lag_seconds) : "?")
         << " fails=" << n.consecutive_failures << "}";
    }
    Log::Write(config::LogLevel::kDebug, "health", os.str());
  }
  out_->store(std::make_shared<const Topology>(std::move(t)), std::memory_order_release);
  if (version_ == 1) {
    std::lock_guard lock(mu_);
    first_published_ = true;
    cv_.notify_all();
  }
}

void Monitor::Impl::LogTopologyChange(const Topology& t) {
  std::vector<int> claims;
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    const NodeStatus& n = t.nodes[i];
    if (n.role == NodeRole::kPrimary &&
        (n.state == NodeHealth::kUp || n.state == NodeHealth::kSuspect)) {
      claims.push_back(static_cast<int>(i));
    }
  }
  const bool primary_changed = t.primary != last_primary_;
  const bool claims_changed = claims != last_claims_;
  last_primary_ = t.primary;
  last_claims_ = claims;
  if (t.primary_conflict) {
    if (!primary_changed && !claims_changed) return;
    std::string names;
    for (int i : claims) names += (names.empty() ? "" : ", ") + Label(i);
    PGRELAY_LOG(kError, "health",
                claims.size() << " nodes report themselves primary: " << names
                              << "; no writes until exactly one does (split brain: fix the "
                                 "cluster, e.g. stop or demote the stale primary)");
    return;
  }
  if (!primary_changed) return;
  if (t.primary >= 0) {
    PGRELAY_LOG(kInfo, "health",
                "primary is " << Label(t.primary) << ", timeline " << t.nodes[t.primary].timeline
                              << ", epoch " << t.epoch);
    return;
  }
  std::string why = "no reachable node reports itself primary";
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    if (t.nodes[i].role == NodeRole::kPrimary && t.nodes[i].state == NodeHealth::kDown) {
      why = "the primary " + Label(i) + " is down";
    }
  }
  PGRELAY_LOG(kWarning, "health", "no primary: " << why << "; writes fail until one is found");
}

Monitor::Monitor(std::shared_ptr<const config::Config> config)
    : impl_(std::make_unique<Impl>(std::move(config), &snapshot_)) {
  snapshot_.store(impl_->Initial(), std::memory_order_release);
}

Monitor::~Monitor() { Stop(); }

void Monitor::Start() { impl_->Start(); }

void Monitor::Stop() { impl_->Stop(); }

}  // namespace pgrelay::health
