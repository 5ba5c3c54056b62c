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
#include <future>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "config/log.h"
#include "health/cluster_state.h"
#include "health/etcd_state_store.h"
#include "health/failover.h"
#include "health/hook.h"
#include "health/node_probe.h"
#include "health/node_state.h"
#include "health/record_watcher.h"
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

// coordination.etcd: how often the shared record is read besides the watch.
constexpr auto kSharedRefresh = std::chrono::seconds(5);

int64_t Millis(Clock::duration d) { return std::chrono::duration_cast<milliseconds>(d).count(); }

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", s);
  return buf;
}

}  // namespace

class Monitor::Impl {
 public:
  Impl(std::shared_ptr<const config::Config> config, Monitor* owner);

  void Start();
  void Stop();
  std::shared_ptr<const Topology> Initial() const;
  std::pair<bool, std::string> Switchover(const std::string& target, milliseconds timeout);
  bool Reconfigure(std::shared_ptr<const config::Config> next, milliseconds timeout);
  void SetPromotionGate(PromotionGate gate) { gate_ = std::move(gate); }

 private:
  struct Node {
    config::NodeConfig config;
    std::unique_ptr<NodeProbe> probe;
    NodeState state;
    bool busy = false;  // a probe is running
    Clock::time_point probe_started{};
  };

  asio::awaitable<void> Run();
  void AddNode(const config::NodeConfig& node);
  void Apply(std::shared_ptr<const config::Config> next);  // on the monitor's thread
  void StartRound(Clock::time_point now);
  asio::awaitable<void> ProbeNode(size_t i, uint64_t round, Clock::time_point deadline);
  void LogTransition(size_t i, const NodeTransition& t) const;
  std::vector<NodeStatus> Statuses() const;
  void Publish();
  void LogTopologyChange(const Topology& t);
  // Failover (failover.mode auto/manual): the epoch record and promotions.
  bool Recording() const { return config_->failover.mode != config::FailoverMode::kOff; }
  int RecordedIndex() const;
  // Records a new primary the topology settled on (first discovery, or a promotion made
  // outside pgrelay); false if the record could not be stored (then no primary is published).
  bool RecordPrimary(const Topology& t);
  // After a refused Store (another pgrelay wrote first, coordination.etcd): reads the record
  // and follows it if it is newer than ours. True if it was adopted.
  bool AdoptNewerRecord();
  // Reads the record and follows it if it is newer than ours: true if followed, false if not
  // newer, nullopt (with *error) if it could not be read.
  std::optional<bool> LoadAndFollow(std::string* error);
  // Follows `latest` if it is newer than our record (logged); true if followed.
  bool FollowIfNewer(const std::optional<ClusterRecord>& latest);
  // coordination.etcd: the record as the watcher saw it (posted to the monitor's thread).
  // A newer one is followed and published at once. Ignored while a promotion runs here: its
  // compare-and-swap must compare against the record it was decided on.
  void OnWatchedRecord(const ClusterRecord& latest, int64_t mod_revision);
  // coordination.etcd: reads the shared record now and then (kSharedRefresh) and follows a
  // newer one: the safety net under the watch (a record missed while a promotion ran here).
  void RefreshSharedRecord(Clock::time_point now);
  std::unique_ptr<RecordWatcher> watcher_;
  EtcdStateStore* shared_store_ = nullptr;  // store_, when it is the etcd one
  bool Shared() const { return config_->coordination.etcd.has_value(); }
  Clock::time_point last_record_refresh_{};
  bool record_refresh_failing_ = false;
  void MaybeFailover(const Topology& t);
  asio::awaitable<void> RunFailover(PromotionPlan plan, std::shared_ptr<const Topology> t);
  asio::awaitable<bool> DrainPrimary(const NodeStatus& primary);
  asio::awaitable<void> RunSwitchover(
      std::string target, std::shared_ptr<std::promise<std::pair<bool, std::string>>> done);
  // The common end of a promotion: record the new primary, look again at once, re-point the
  // other replicas. (The caller runs after_promote.)
  asio::awaitable<void> FinishPromotion(const NodeStatus& candidate, uint32_t timeline,
                                        const std::shared_ptr<const Topology>& t, int old_primary);
  asio::awaitable<bool> RunFailoverHook(
      const char* which, const std::string& command,
      const std::vector<std::pair<std::string, std::string>>& values);
  std::string Label(size_t i) const;  // "pg1 (127.0.0.1:5432)"

  // Replaced by a reload on the monitor's thread: a coroutine that awaits while it uses the
  // config holds its own reference (a local copy of config_).
  std::shared_ptr<const config::Config> config_;
  Monitor* const owner_;  // publishes to its snapshot_ and version_
  milliseconds interval_;
  milliseconds timeout_;
  // Declared before everything that holds Asio objects, so it is destroyed after them.
  asio::io_context io_{1};
  asio::steady_timer tick_{io_};
  std::vector<std::unique_ptr<Node>> nodes_;                // one per node slot; stable addresses
  std::vector<std::unique_ptr<NodeProbe>> retired_probes_;  // may still be ending a probe
  uint64_t round_ = 0;
  int outstanding_ = 0;  // probes of the current round still running
  bool published_ = true;
  uint64_t version_ = 0;
  uint64_t epoch_ = 0;  // the record's epoch (0: nothing recorded)
  std::unique_ptr<ClusterStateStore> store_;
  std::optional<ClusterRecord> record_;
  bool failover_running_ = false;
  FailoverCancel failover_cancel_;
  PromotionGate gate_;  // unset: this instance decides alone
  Clock::time_point next_failover_attempt_{};
  std::string last_why_not_;
  uint64_t failovers_ = 0;
  double last_failover_seconds_ = 0;
  bool stopping_ = false;
  int last_primary_ = -2;  // -2: nothing published yet
  std::vector<int> last_claims_;
  std::vector<int> last_fenced_;
  std::thread thread_;

  std::mutex mu_;  // guards first_published_ (Start waits for it)
  std::condition_variable cv_;
  bool first_published_ = false;
};

Monitor::Impl::Impl(std::shared_ptr<const config::Config> config, Monitor* owner)
    : config_(std::move(config)),
      owner_(owner),
      interval_(config_->health.interval),
      timeout_(config_->health.timeout) {
  for (const config::NodeConfig& node : config_->nodes) AddNode(node);
}

void Monitor::Impl::AddNode(const config::NodeConfig& node) {
  const config::BackendCredentials creds = config_->MonitorCredentials();
  const HealthThresholds thresholds{config_->health.failure_threshold,
                                    config_->health.recovery_threshold};
  PgConnectParams params =
      NodeConnectParams(node.host, node.port, creds.user, creds.password, config_->health.database,
                        "pgrelay-health", config_->backend_tls);
  auto n = std::make_unique<Node>(Node{node, nullptr, NodeState(thresholds)});
  n->probe = std::make_unique<NodeProbe>(io_.get_executor(), std::move(params));
  nodes_.push_back(std::move(n));
}

void Monitor::Impl::Apply(std::shared_ptr<const config::Config> next) {
  config_ = std::move(next);
  interval_ = config_->health.interval;
  timeout_ = config_->health.timeout;
  const config::BackendCredentials creds = config_->MonitorCredentials();
  const HealthThresholds thresholds{config_->health.failure_threshold,
                                    config_->health.recovery_threshold};
  for (size_t i = 0; i < config_->nodes.size(); ++i) {
    const config::NodeConfig& c = config_->nodes[i];
    if (i >= nodes_.size()) {
      AddNode(c);
      PGRELAY_LOG(kInfo, "health", "node " << Label(i) << " added by a config reload");
      continue;
    }
    Node& n = *nodes_[i];
    const bool was_removed = n.config.removed;
    n.config = c;
    if (c.removed && !was_removed) {
      n.probe->Cancel();  // ends a running probe; the slot is never probed again unless re-added
      if (!n.busy) n.probe->Close();  // else ProbeNode closes it when the probe ends
      PGRELAY_LOG(kInfo, "health", "node " << Label(i) << " removed by a config reload");
      continue;
    }
    if (c.removed) continue;
    PgConnectParams params =
        NodeConnectParams(c.host, c.port, creds.user, creds.password, config_->health.database,
                          "pgrelay-health", config_->backend_tls);
    if (was_removed) {
      // Back in the configuration: a fresh probe (the cancelled one may still be ending) and a
      // fresh state (down until it answers).
      retired_probes_.push_back(std::move(n.probe));
      n.probe = std::make_unique<NodeProbe>(io_.get_executor(), std::move(params));
      n.state = NodeState(thresholds);
      PGRELAY_LOG(kInfo, "health", "node " << Label(i) << " added back by a config reload");
      continue;
    }
    n.probe->SetParams(std::move(params));
    n.state.SetThresholds(thresholds);
  }
  StartRound(Clock::now());  // publish the new node list now
}

bool Monitor::Impl::Reconfigure(std::shared_ptr<const config::Config> next, milliseconds timeout) {
  if (!thread_.joinable()) {
    Apply(std::move(next));
    return true;
  }
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> applied = done->get_future();
  asio::post(io_, [this, next = std::move(next), done] {
    if (!stopping_) Apply(next);
    done->set_value();
  });
  return applied.wait_for(timeout) == std::future_status::ready;
}

std::string Monitor::Impl::Label(size_t i) const {
  const config::NodeConfig& c = nodes_[i]->config;
  const bool v6 = c.host.find(':') != std::string::npos;
  return c.name + " (" + (v6 ? "[" + c.host + "]" : c.host) + ":" + std::to_string(c.port) + ")";
}

std::vector<NodeStatus> Monitor::Impl::Statuses() const {
  std::vector<NodeStatus> statuses(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = *nodes_[i];
    statuses[i].name = n.config.name;
    statuses[i].host = n.config.host;
    statuses[i].port = n.config.port;
    statuses[i].weight = n.config.weight;
    if (n.config.removed) {
      statuses[i].removed = true;
      statuses[i].last_error = "removed from the configuration";
      continue;  // down, role unknown: never a primary or a replica
    }
    n.state.Fill(&statuses[i]);
  }
  return statuses;
}

std::shared_ptr<const Topology> Monitor::Impl::Initial() const {
  return std::make_shared<const Topology>(BuildTopology(Statuses(), 0, epoch_));
}

void Monitor::Impl::Start() {
  if (thread_.joinable() || stopping_) return;
  if (Recording()) {
    if (Shared()) {
      auto shared = std::make_unique<EtcdStateStore>(*config_->coordination.etcd);
      shared_store_ = shared.get();
      store_ = std::move(shared);
      PGRELAY_LOG(kInfo, "failover",
                  "failover record shared through etcd at "
                      << EtcdStateStore::RecordKey(config_->coordination.etcd->prefix)
                      << " (member " << config_->coordination.member << ")");
    } else if (config_->failover.state_file.empty()) {
      store_ = std::make_unique<MemoryStateStore>();
      PGRELAY_LOG(kWarning, "failover",
                  "failover.state_file is not set: the failover record lives in memory only, "
                  "and a restarted pgrelay cannot tell a stale primary from the current one");
    } else {
      store_ = std::make_unique<LocalStateStore>(config_->failover.state_file);
    }
    std::string error;
    if (!store_->Load(&record_, &error)) throw std::runtime_error(error);
    if (record_) {
      epoch_ = record_->epoch;
      PGRELAY_LOG(kInfo, "failover",
                  "failover record: primary " << record_->primary << " at epoch " << record_->epoch
                                              << ", timeline " << record_->timeline);
    }
  }
  if (shared_store_ != nullptr) {
    watcher_ = std::make_unique<RecordWatcher>(
        *config_->coordination.etcd, [this](const ClusterRecord& latest, int64_t mod_revision) {
          asio::post(io_, [this, latest, mod_revision] { OnWatchedRecord(latest, mod_revision); });
        });
    watcher_->Start();
  }
  asio::co_spawn(io_, Run(), RethrowOnError);
  thread_ = std::thread([this] {
    NameThisThread("pgrelay-health");
    io_.run();
  });
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, interval_ + timeout_ + std::chrono::seconds(1),
               [this] { return first_published_; });
}

void Monitor::Impl::Stop() {
  if (watcher_) watcher_->Stop();  // before the io_context it posts to stops
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    stopping_ = true;
    tick_.cancel();
    for (auto& n : nodes_) n->probe->Cancel();
    failover_cancel_.Cancel();
  });
  thread_.join();  // run() returns once every probe coroutine has ended
  for (auto& n : nodes_) n->probe->Close();
  for (auto& p : retired_probes_) p->Close();
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
    Node& n = *nodes_[i];
    if (n.config.removed) continue;
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
  Node& n = *nodes_[i];
  const milliseconds timeout = timeout_;
  NodeProbe* probe = n.probe.get();  // a reload may replace n.probe meanwhile (retired_probes_)
  const ProbeOutcome outcome = co_await probe->Run(deadline, timeout);
  n.busy = false;
  if (stopping_ || probe != n.probe.get() || n.config.removed) {
    if (!stopping_ && (probe != n.probe.get() || n.config.removed)) probe->Close();
    if (round == round_ && --outstanding_ == 0 && !published_ && !stopping_) Publish();
    co_return;
  }
  const Clock::time_point now = Clock::now();
  LogTransition(i, outcome.ok ? n.state.OnSuccess(outcome.sample, now)
                              : n.state.OnFailure(outcome.error, now));
  // A probe from an earlier round (it ran late) is published with the current round.
  if (round == round_ && --outstanding_ == 0 && !published_) Publish();
}

void Monitor::Impl::LogTransition(size_t i, const NodeTransition& t) const {
  if (!t.counted) return;
  const NodeState& s = nodes_[i]->state;
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

int Monitor::Impl::RecordedIndex() const {
  if (!record_) return -1;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (!nodes_[i]->config.removed && nodes_[i]->config.name == record_->primary) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

bool Monitor::Impl::RecordPrimary(const Topology& t) {
  const NodeStatus& p = t.nodes[t.primary];
  if (record_ && record_->primary == p.name) return true;
  ClusterRecord next{record_ ? record_->epoch + 1 : 1, p.name, p.timeline};
  std::string error;
  if (!store_->Store(next, &error)) {
    if (AdoptNewerRecord()) return record_->primary == p.name;
    PGRELAY_LOG(kError, "failover",
                "cannot store the failover record (primary "
                    << p.name << ", epoch " << next.epoch << "): " << error
                    << "; no writes until it can be stored");
    return false;
  }
  if (record_) {
    PGRELAY_LOG(kWarning, "failover",
                "primary changed outside pgrelay: " << p.name << " (timeline " << p.timeline
                                                    << ") is the primary at epoch " << next.epoch
                                                    << " (was " << record_->primary << ")");
  }
  record_ = next;
  epoch_ = next.epoch;
  return true;
}

bool Monitor::Impl::AdoptNewerRecord() {
  std::string error;
  const std::optional<bool> adopted = LoadAndFollow(&error);
  if (!adopted) PGRELAY_LOG(kWarning, "failover", error);
  return adopted.value_or(false);
}

std::optional<bool> Monitor::Impl::LoadAndFollow(std::string* error) {
  std::optional<ClusterRecord> latest;
  if (!store_->Load(&latest, error)) return std::nullopt;
  return FollowIfNewer(latest);
}

void Monitor::Impl::OnWatchedRecord(const ClusterRecord& latest, int64_t mod_revision) {
  if (stopping_ || failover_running_ || shared_store_ == nullptr) return;
  shared_store_->Observe(latest, mod_revision);
  // Publish now, unless a round is still running: its end publishes with the new record.
  if (FollowIfNewer(latest) && published_) Publish();
}

bool Monitor::Impl::FollowIfNewer(const std::optional<ClusterRecord>& latest) {
  if (!latest || (record_ && latest->epoch <= record_->epoch)) return false;
  PGRELAY_LOG(kWarning, "failover",
              "following the failover record written by another pgrelay: primary "
                  << latest->primary << " at epoch " << latest->epoch
                  << (record_ ? " (was " + record_->primary + " at epoch " +
                                    std::to_string(record_->epoch) + ")"
                              : std::string()));
  record_ = latest;
  epoch_ = latest->epoch;
  return true;
}

void Monitor::Impl::RefreshSharedRecord(Clock::time_point now) {
  if (!Shared() || !store_ || failover_running_ || now - last_record_refresh_ < kSharedRefresh) {
    return;
  }
  last_record_refresh_ = now;
  std::string error;
  if (!LoadAndFollow(&error)) {
    if (!record_refresh_failing_) {
      PGRELAY_LOG(kWarning, "failover",
                  error << "; keeping primary " << (record_ ? record_->primary : "-")
                        << " at epoch " << epoch_ << " (no record change without etcd)");
    }
    record_refresh_failing_ = true;
    return;
  }
  if (record_refresh_failing_) PGRELAY_LOG(kInfo, "failover", "etcd answers again");
  record_refresh_failing_ = false;
}

void Monitor::Impl::Publish() {
  published_ = true;
  if (Recording()) RefreshSharedRecord(Clock::now());
  Topology t;
  if (Recording()) {
    const RecordedPrimary recorded{RecordedIndex(), record_ ? record_->timeline : 0};
    t = BuildTopology(Statuses(), ++version_, epoch_, std::max(last_primary_, -1), &recorded);
    if (t.primary >= 0 && !failover_running_ && !RecordPrimary(t)) t.primary = -1;
    t.epoch = epoch_;
    t.failovers = failovers_;
    t.last_failover_seconds = last_failover_seconds_;
    t.failover_running = failover_running_;
  } else {
    t = BuildTopology(Statuses(), ++version_, epoch_, std::max(last_primary_, -1));
  }
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
  auto published = std::make_shared<const Topology>(std::move(t));
  owner_->snapshot_.store(published, std::memory_order_release);
  owner_->version_.store(published->version, std::memory_order_release);
  if (config_->failover.mode == config::FailoverMode::kAuto) MaybeFailover(*published);
  if (version_ == 1) {
    std::lock_guard lock(mu_);
    first_published_ = true;
    cv_.notify_all();
  }
}

void Monitor::Impl::LogTopologyChange(const Topology& t) {
  std::vector<int> fenced;
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    if (t.nodes[i].state != NodeHealth::kFenced) continue;
    fenced.push_back(static_cast<int>(i));
    if (std::find(last_fenced_.begin(), last_fenced_.end(), static_cast<int>(i)) ==
        last_fenced_.end()) {
      PGRELAY_LOG(kError, "health",
                  "node " << Label(i) << " is fenced: it claims to be primary (timeline "
                          << t.nodes[i].timeline << ") but "
                          << (t.primary >= 0 ? t.nodes[t.primary].name : std::string("no node"))
                          << " is the primary at epoch " << t.epoch
                          << "; it gets no traffic until it is rejoined as a replica");
    }
  }
  last_fenced_ = std::move(fenced);
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

void Monitor::Impl::MaybeFailover(const Topology& t) {
  if (failover_running_ || stopping_ || Clock::now() < next_failover_attempt_) return;
  std::string why_not;
  std::optional<PromotionPlan> plan = PlanPromotion(t, RecordedIndex(), *config_, &why_not);
  if (plan && gate_ && !gate_(t.nodes[plan->failed].name, epoch_, &why_not)) plan.reset();
  if (!plan) {
    if (why_not != last_why_not_ && !why_not.empty()) {
      PGRELAY_LOG(kWarning, "failover", why_not);
    }
    last_why_not_ = why_not;
    return;
  }
  last_why_not_.clear();
  failover_running_ = true;
  auto snapshot = owner_->snapshot_.load(std::memory_order_acquire);
  asio::co_spawn(io_, RunFailover(*plan, std::move(snapshot)), RethrowOnError);
}

asio::awaitable<void> Monitor::Impl::RunFailover(PromotionPlan plan,
                                                 std::shared_ptr<const Topology> t) {
  const std::shared_ptr<const config::Config> config = config_;  // kept across a reload
  const Clock::time_point start = Clock::now();
  const NodeStatus failed = t->nodes[plan.failed];
  const NodeStatus candidate = t->nodes[plan.candidate];
  PGRELAY_LOG(kWarning, "failover",
              "primary " << Label(plan.failed) << " failed (" << failed.last_error
                         << "); promoting " << Label(plan.candidate) << ", received up to "
                         << FormatLsn(plan.candidate_lsn));
  const asio::any_io_executor executor = io_.get_executor();
  const HookValues values = PromotionHookValues(failed, candidate, epoch_ + 1);
  if (!config->failover.before_promote.empty()) {
    const bool ok =
        co_await RunFailoverHook("before_promote", config->failover.before_promote, values);
    if (stopping_) co_return;
    if (!ok) {
      PGRELAY_LOG(kError, "failover",
                  "before_promote failed: not promoting " << candidate.name << "; retrying in 5 s");
      failover_running_ = false;
      next_failover_attempt_ = Clock::now() + std::chrono::seconds(5);
      co_return;
    }
  }
  PromotionResult result = co_await Promote(executor, *config, candidate, failover_cancel_);
  if (stopping_) co_return;
  if (!result.ok) {
    PGRELAY_LOG(kError, "failover",
                "promoting " << Label(plan.candidate) << " failed: " << result.error
                             << "; retrying in 5 s");
    failover_running_ = false;
    next_failover_attempt_ = Clock::now() + std::chrono::seconds(5);
    co_return;
  }
  last_failover_seconds_ = std::chrono::duration<double>(Clock::now() - start).count();
  co_await FinishPromotion(candidate, result.timeline, t, plan.failed);
  PGRELAY_LOG(
      kWarning, "failover",
      "failover done in " << Seconds(std::chrono::duration<double>(Clock::now() - start).count())
                          << " s; " << failed.name << " is fenced until rejoined as a replica");
  if (!config->failover.after_promote.empty() && !stopping_) {
    co_await RunFailoverHook("after_promote", config->failover.after_promote, values);
  }
}

std::pair<bool, std::string> Monitor::Impl::Switchover(const std::string& target,
                                                       milliseconds timeout) {
  auto done = std::make_shared<std::promise<std::pair<bool, std::string>>>();
  std::future<std::pair<bool, std::string>> result = done->get_future();
  asio::post(io_, [this, target, done] {
    asio::co_spawn(io_, RunSwitchover(target, done), RethrowOnError);
  });
  if (result.wait_for(timeout) != std::future_status::ready) {
    return {false, "switchover still running after " + std::to_string(timeout.count()) +
                       " ms; see the log"};
  }
  return result.get();
}

asio::awaitable<void> Monitor::Impl::RunSwitchover(
    std::string target, std::shared_ptr<std::promise<std::pair<bool, std::string>>> done) {
  const std::shared_ptr<const config::Config> config = config_;  // kept across a reload
  auto fail = [&](const std::string& why) {
    PGRELAY_LOG(kError, "failover", "switchover to " << target << " refused: " << why);
    done->set_value({false, why});
  };
  if (!Recording()) {
    fail("switchover needs failover.mode manual or auto (pgrelay keeps the epoch record)");
    co_return;
  }
  if (config->failover.before_promote.empty()) {
    fail("switchover needs failover.hooks.before_promote to stop the current primary");
    co_return;
  }
  if (failover_running_) {
    fail("a failover or switchover is already running");
    co_return;
  }
  const std::shared_ptr<const Topology> t = owner_->snapshot_.load(std::memory_order_acquire);
  // With no primary, this is a manual failover from the recorded primary, under the same
  // safety rules as an automatic one.
  const bool failover = t->primary < 0;
  const int old = failover ? RecordedIndex() : t->primary;
  int to = -1;
  for (size_t i = 0; i < t->nodes.size(); ++i) {
    if (!t->nodes[i].removed && t->nodes[i].name == target) to = static_cast<int>(i);
  }
  if (to < 0) {
    fail("no node named " + target);
    co_return;
  }
  if (old < 0) {
    fail("there is no primary to switch over from");
    co_return;
  }
  if (failover) {
    std::string why;
    const std::optional<PromotionPlan> plan = PlanPromotion(*t, old, *config, &why);
    if (!plan) {
      fail(why.empty() ? "the primary " + t->nodes[old].name +
                             " is not down (failure_threshold failed probes) yet"
                       : why);
      co_return;
    }
    const uint64_t received = std::max(t->nodes[to].receive_lsn, t->nodes[to].replay_lsn);
    if (plan->candidate != to && received < plan->candidate_lsn) {
      fail(target + " has received less WAL than " + t->nodes[plan->candidate].name +
           "; promoting it would lose writes (choose " + t->nodes[plan->candidate].name + ")");
      co_return;
    }
  }
  const NodeStatus& from = t->nodes[old];
  const NodeStatus& candidate = t->nodes[to];
  if (to == old || candidate.role != NodeRole::kReplica || candidate.state != NodeHealth::kUp) {
    fail(target + " is not a replica that is up");
    co_return;
  }
  failover_running_ = true;
  const Clock::time_point start = Clock::now();
  const asio::any_io_executor executor = io_.get_executor();
  PGRELAY_LOG(kWarning, "failover",
              (failover ? "manual failover from " : "switchover from ")
                  << Label(old) << " to " << Label(to));
  // New statements are held by the caller; let the ones running on the primary finish.
  bool drained = true;
  if (!failover) drained = co_await DrainPrimary(from);
  if (!drained) {
    PGRELAY_LOG(kWarning, "failover",
                "statements still active on " << from.name
                                              << " after the drain period; stopping it anyway");
  }
  const HookValues values = PromotionHookValues(from, candidate, epoch_ + 1);
  const bool stopped =
      co_await RunFailoverHook("before_promote", config->failover.before_promote, values);
  if (!stopped) {
    failover_running_ = false;
    fail("before_promote failed, " + from.name + " stays the primary");
    co_return;
  }
  // A cleanly stopped primary has sent all its WAL to its streaming replicas; Promote replays it.
  PromotionResult result = co_await Promote(executor, *config, candidate, failover_cancel_);
  if (!result.ok) {
    failover_running_ = false;
    fail("promoting " + candidate.name + " failed: " + result.error +
         " (the old primary is stopped: start it again, or let failover.mode auto promote)");
    co_return;
  }
  co_await FinishPromotion(candidate, result.timeline, t, old);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const std::string message = (failover ? "failed over from " : "switched over from ") + from.name +
                              " to " + candidate.name + " at epoch " + std::to_string(epoch_) +
                              " in " + Seconds(seconds) + " s";
  PGRELAY_LOG(kWarning, "failover", message);
  done->set_value({true, message});
  if (!config->failover.after_promote.empty() && !stopping_) {
    co_await RunFailoverHook("after_promote", config->failover.after_promote, values);
  }
}

asio::awaitable<bool> Monitor::Impl::DrainPrimary(const NodeStatus& primary) {
  const std::shared_ptr<const config::Config> config = config_;  // kept across a reload
  constexpr auto kDrain = std::chrono::seconds(5);
  const asio::any_io_executor executor = io_.get_executor();
  const Clock::time_point deadline = Clock::now() + kDrain;
  const config::BackendCredentials creds = config->MonitorCredentials();
  const PgConnectParams params =
      NodeConnectParams(primary.host, primary.port, creds.user, creds.password,
                        config->health.database, "pgrelay-failover", config->backend_tls);
  PgConnection conn(executor);
  if (!co_await conn.Connect(params, deadline)) co_return false;
  asio::steady_timer timer(executor);
  while (Clock::now() < deadline) {
    PgResult r;
    const bool ok = co_await conn.Query(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND state <> 'idle' AND pid <> pg_backend_pid()",
        deadline, &r);
    if (ok && r.rows.size() == 1 && r.rows[0].size() == 1 && r.rows[0][0] == "0") co_return true;
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(kNoThrow);
  }
  co_return false;
}

asio::awaitable<void> Monitor::Impl::FinishPromotion(const NodeStatus& candidate, uint32_t timeline,
                                                     const std::shared_ptr<const Topology>& t,
                                                     int old_primary) {
  const std::shared_ptr<const config::Config> config = config_;  // kept across a reload
  const asio::any_io_executor executor = io_.get_executor();
  ClusterRecord next{epoch_ + 1, candidate.name, timeline};
  std::string error;
  const bool stored = store_->Store(next, &error);
  if (!stored) PGRELAY_LOG(kError, "failover", "cannot store the failover record: " << error);
  const bool adopted = !stored && AdoptNewerRecord();
  if (adopted && record_->primary != candidate.name) {
    // Another pgrelay recorded a different change first: its record is the truth, and the node
    // promoted here is fenced as a primary of an older epoch; the replicas stay as they are.
    PGRELAY_LOG(kError, "failover",
                "promoted " << candidate.name << ", but another pgrelay recorded primary "
                            << record_->primary << " at epoch " << epoch_ << " first; "
                            << candidate.name << " is fenced");
    failover_running_ = false;
    StartRound(Clock::now());
    co_return;
  }
  // Adopted: another pgrelay saw this promotion and recorded it first. A state file that could
  // not be written: carry on with the record in memory. With etcd unanswered: the rounds record
  // the new primary (on a newer timeline than the recorded one) once etcd answers; until then
  // nobody routes writes to it.
  if (stored || (!adopted && !Shared())) {
    record_ = next;
    epoch_ = next.epoch;
  }
  const bool recorded = stored || adopted || !Shared();
  ++failovers_;
  failover_running_ = false;
  if (recorded) {
    PGRELAY_LOG(kWarning, "failover",
                "promoted " << candidate.name << " (" << candidate.host << ":" << candidate.port
                            << ") to primary at epoch " << epoch_ << ", timeline " << timeline);
  } else {
    PGRELAY_LOG(kError, "failover",
                "promoted " << candidate.name << " (" << candidate.host << ":" << candidate.port
                            << "), timeline " << timeline
                            << ", but the record is not written yet: no writes until it is");
  }
  StartRound(Clock::now());  // see the new primary now, not at the next round
  for (size_t i = 0; i < t->nodes.size(); ++i) {
    const NodeStatus& n = t->nodes[i];
    if (static_cast<int>(i) == old_primary || n.name == candidate.name ||
        n.role != NodeRole::kReplica) {
      continue;
    }
    const std::string problem = co_await Repoint(executor, *config, candidate, n, failover_cancel_);
    if (stopping_) co_return;
    if (problem.empty()) {
      PGRELAY_LOG(kInfo, "failover", "replica " << Label(i) << " streams from " << candidate.name);
    } else {
      PGRELAY_LOG(kError, "failover", problem);
    }
  }
}

asio::awaitable<bool> Monitor::Impl::RunFailoverHook(const char* which, const std::string& command,
                                                     const HookValues& values) {
  const std::string expanded = ExpandHook(command, values);
  const asio::any_io_executor executor = io_.get_executor();
  PGRELAY_LOG(kInfo, "failover", which << ": running " << expanded);
  const HookResult r = co_await RunHook(executor, expanded, config_->failover.hook_timeout);
  std::string output = r.output;
  while (!output.empty() && (output.back() == '\n' || output.back() == '\r')) output.pop_back();
  if (r.ok) {
    PGRELAY_LOG(kInfo, "failover", which << " succeeded" << (output.empty() ? "" : ": ") << output);
  } else {
    PGRELAY_LOG(
        kError, "failover",
        which << (r.timed_out ? " timed out after " +
                                    std::to_string(config_->failover.hook_timeout.count()) +
                                    " ms (failover.hooks.timeout)"
                  : !r.error.empty() ? " could not run: " + r.error
                                     : " exited with status " + std::to_string(r.exit_status))
              << (output.empty() ? "" : ": ") << output);
  }
  co_return r.ok;
}

Monitor::Monitor(std::shared_ptr<const config::Config> config)
    : impl_(std::make_unique<Impl>(std::move(config), this)) {
  auto initial = impl_->Initial();
  version_.store(initial->version, std::memory_order_release);
  snapshot_.store(std::move(initial), std::memory_order_release);
}

Monitor::~Monitor() { Stop(); }

void Monitor::Start() { impl_->Start(); }

void Monitor::SetPromotionGate(PromotionGate gate) { impl_->SetPromotionGate(std::move(gate)); }

void Monitor::Stop() { impl_->Stop(); }

bool Monitor::Reconfigure(std::shared_ptr<const config::Config> config,
                          std::chrono::milliseconds timeout) {
  return impl_->Reconfigure(std::move(config), timeout);
}

std::pair<bool, std::string> Monitor::Switchover(const std::string& target,
                                                 std::chrono::milliseconds timeout) {
  return impl_->Switchover(target, timeout);
}

}  // namespace pgrelay::health
