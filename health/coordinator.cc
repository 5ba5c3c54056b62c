#include "health/coordinator.h"

#include <algorithm>
#include <boost/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "config/log.h"
#include "health/etcd_client.h"
#include "health/etcd_state_store.h"
#include "health/probe_sample.h"

namespace pgrelay::health {

namespace {
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
}  // namespace

// State of the coordinator's thread only.
struct Coordinator::Impl {
  explicit Impl(const config::EtcdConfig& etcd) : client(EtcdOptionsFrom(etcd)) {}
  EtcdClient client;
  int64_t lease = 0;            // 0: none yet (or it expired)
  int64_t granted_ttl = 0;      // seconds, as etcd answered the last grant or renewal
  Clock::time_point renewed{};  // when that request was sent
  Clock::time_point member_written{};
  bool holding = false;  // this instance holds the coordinator key under `lease`
  std::string holder;
  std::map<std::string, std::string> members;
};

Coordinator::Coordinator(config::EtcdConfig etcd, std::string member, milliseconds interval,
                         std::function<std::string()> view)
    : etcd_(std::move(etcd)),
      member_(std::move(member)),
      interval_(interval),
      view_(std::move(view)),
      impl_(std::make_unique<Impl>(etcd_)) {
  status_.member = member_;
  status_.last_error = "no answer from etcd yet";
}

Coordinator::~Coordinator() { Stop(true); }

void Coordinator::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

void Coordinator::Stop(bool release) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    release_ = release;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mu_);
  status_.coordinator = false;
  acts_until_ = {};
}

bool Coordinator::IsCoordinator() const {
  std::lock_guard lock(mu_);
  return status_.coordinator && Clock::now() < acts_until_;
}

bool Coordinator::MayPromote(const std::string& failed, uint64_t epoch,
                             std::string* why_not) const {
  std::lock_guard lock(mu_);
  if (!status_.coordinator || Clock::now() >= acts_until_) {
    *why_not = "the primary " + failed +
               " is down; only the coordinator promotes, and this pgrelay (" + member_ +
               ") is not it (" +
               (!status_.etcd_reachable  ? "etcd unreachable"
                : status_.holder.empty() ? "none elected"
                                         : "coordinator: " + status_.holder) +
               ")";
    return false;
  }
  return MajorityReportsDown(status_.members, failed, epoch, why_not);
}

Coordinator::Status Coordinator::Snapshot() const {
  std::lock_guard lock(mu_);
  Status s = status_;
  s.coordinator = s.coordinator && Clock::now() < acts_until_;
  return s;
}

void Coordinator::Run() {
  NameThisThread("pgrelay-coord");
  bool failing = false;
  bool was_coordinator = false;
  const milliseconds period =
      std::min(interval_, std::chrono::duration_cast<milliseconds>(etcd_.lease_ttl) / 3);
  for (;;) {
    std::string error;
    const bool ok = Round(&error);
    Impl& d = *impl_;
    if (!ok && !failing) {
      PGRELAY_LOG(
          kWarning, "coordination",
          "etcd cannot be reached: " << error << "; this pgrelay promotes nothing until it can");
    } else if (ok && failing) {
      PGRELAY_LOG(kInfo, "coordination", "etcd answers again");
    }
    failing = !ok;
    {
      std::lock_guard lock(mu_);
      status_.etcd_reachable = ok;
      if (!ok) status_.last_error = error;
      if (ok) {
        status_.coordinator = d.holding;
        status_.holder = d.holder;
        status_.members = d.members;
        // Act only while the lease is certainly alive at etcd: it expires no earlier than the
        // renewal's arrival + the TTL granted; the request timeout is the safety margin.
        acts_until_ = d.holding ? d.renewed + std::chrono::seconds(d.granted_ttl) - etcd_.timeout
                                : Clock::time_point{};
      }
    }
    const bool now_coordinator = IsCoordinator();
    if (now_coordinator != was_coordinator) {
      if (now_coordinator) {
        PGRELAY_LOG(kWarning, "coordination",
                    "this pgrelay (" << member_ << ") is the coordinator now");
      } else {
        PGRELAY_LOG(kWarning, "coordination",
                    "this pgrelay (" << member_ << ") is no longer the coordinator"
                                     << (ok ? "" : " (etcd unreachable)"));
      }
      was_coordinator = now_coordinator;
    }
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, period, [&] { return stopping_; })) break;
  }
  if (release_ && impl_->lease != 0) {
    std::string ignored;
    impl_->client.LeaseRevoke(impl_->lease, &ignored);  // the key and the membership go now
  }
}

bool Coordinator::Round(std::string* error) {
  Impl& d = *impl_;
  const Clock::time_point now = Clock::now();
  if (d.lease == 0) {
    const Clock::time_point sent = Clock::now();
    std::optional<EtcdLease> lease = d.client.LeaseGrant(etcd_.lease_ttl.count(), error);
    if (!lease) return false;
    d.lease = lease->id;
    d.granted_ttl = lease->ttl;
    d.renewed = sent;
    d.holding = false;
    d.member_written = {};
  } else if (now - d.renewed >= etcd_.lease_ttl / 3) {
    const Clock::time_point sent = Clock::now();
    std::optional<int64_t> remaining = d.client.LeaseKeepAliveOnce(d.lease, error);
    if (!remaining) return false;
    if (*remaining <= 0) {
      // The lease expired (etcd unreachable for too long): the key and membership are gone.
      PGRELAY_LOG(kWarning, "coordination", "the etcd lease of " << member_ << " expired");
      d.lease = 0;
      d.holding = false;
      return Round(error);
    }
    d.granted_ttl = *remaining;
    d.renewed = sent;
  }

  if (d.member_written == Clock::time_point{} || now - d.member_written >= interval_) {
    if (!d.client.Put(etcd_.prefix + "/members/" + member_, view_ ? view_() : std::string(),
                      d.lease, error)) {
      return false;
    }
    d.member_written = now;
  }

  const std::string key = etcd_.prefix + "/coordinator";
  EtcdTxn txn;
  if (d.holding) {
    // Still ours? (The key goes with the lease; nobody else writes it while it exists.)
    txn.compare.push_back(EtcdCompare::Value(key, EtcdCompare::Relation::kEqual, member_));
    txn.failure.push_back(EtcdOp::Range(key));
  } else {
    txn.compare.push_back(EtcdCompare::CreateRevision(key, EtcdCompare::Relation::kEqual, 0));
    txn.success.push_back(EtcdOp::Put(key, member_, d.lease));
    txn.failure.push_back(EtcdOp::Range(key));
  }
  std::optional<EtcdTxnResult> r = d.client.Txn(txn, error);
  if (!r) return false;
  if (r->succeeded) {
    d.holding = true;
    d.holder = member_;
  } else {
    d.holding = false;
    d.holder.clear();
    if (!r->responses.empty() && !r->responses.front().kvs.empty()) {
      d.holder = r->responses.front().kvs.front().value;
    }
  }

  std::optional<EtcdRangeResult> members = d.client.RangePrefix(etcd_.prefix + "/members/", error);
  if (!members) return false;
  d.members.clear();
  const size_t strip = etcd_.prefix.size() + std::string("/members/").size();
  for (const EtcdKeyValue& kv : members->kvs) d.members[kv.key.substr(strip)] = kv.value;
  return true;
}

bool MajorityReportsDown(const std::map<std::string, std::string>& views, const std::string& failed,
                         uint64_t epoch, std::string* why_not) {
  namespace json = boost::json;
  std::vector<std::string> agree;
  std::vector<std::string> disagree;
  for (const auto& [member, text] : views) {
    boost::system::error_code ec;
    const json::value view = json::parse(text, ec);
    const json::object* object = ec ? nullptr : view.if_object();
    const json::value* seen_epoch = object ? object->if_contains("epoch") : nullptr;
    const json::value* nodes = object ? object->if_contains("nodes") : nullptr;
    const json::value* node =
        nodes && nodes->is_object() ? nodes->as_object().if_contains(failed) : nullptr;
    if (node == nullptr || !node->is_object() || seen_epoch == nullptr ||
        !seen_epoch->is_number()) {
      disagree.push_back(member + " (no readable view of " + failed + ")");
      continue;
    }
    const uint64_t member_epoch = seen_epoch->to_number<uint64_t>(ec);
    if (!ec && member_epoch > epoch) {
      *why_not = "member " + member + " has seen epoch " + std::to_string(member_epoch) +
                 ", newer than this coordinator's " + std::to_string(epoch) +
                 "; no promotion before following it";
      return false;
    }
    const json::object& n = node->as_object();
    const json::value* state = n.if_contains("state");
    const json::value* up = n.if_contains("up");
    const bool unreachable = (state && state->is_string() &&
                              (state->as_string() == "down" || state->as_string() == "suspect")) ||
                             (up && up->is_bool() && !up->as_bool());
    (unreachable ? agree : disagree).push_back(member);
  }
  if (agree.size() * 2 > views.size()) return true;
  std::string reachable;
  for (const std::string& m : disagree) reachable += (reachable.empty() ? "" : ", ") + m;
  *why_not = "the primary " + failed + " is down here, but only " + std::to_string(agree.size()) +
             " of " + std::to_string(views.size()) +
             " live pgrelay members report it unreachable (not: " + reachable +
             "); no promotion without a majority";
  return false;
}

std::string DescribeView(const Topology& topology) {
  namespace json = boost::json;
  json::object nodes;
  for (const NodeStatus& n : topology.nodes) {
    if (n.removed) continue;
    json::object node;
    node["state"] = ToString(n.state);
    node["role"] = ToString(n.role);
    node["up"] = n.up;
    node["timeline"] = n.timeline;
    node["lsn"] = FormatLsn(n.role == NodeRole::kPrimary ? n.current_lsn : n.replay_lsn);
    nodes[n.name] = std::move(node);
  }
  json::object view;
  view["epoch"] = topology.epoch;
  const NodeStatus* primary = topology.Primary();
  view["primary"] = primary ? json::value(primary->name) : json::value(nullptr);
  view["nodes"] = std::move(nodes);
  return json::serialize(view);
}

}  // namespace pgrelay::health
