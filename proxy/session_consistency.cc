// The consistency strategies of ClientSession (docs/routing.md, "Consistency"):
//
// read-your-writes: when a write of the session commits (its ReadyForQuery returns to idle), the
//   session asks the LsnTracker for the primary's WAL LSN read after that moment: its causal
//   LSN. A read goes only to a replica whose replay LSN is at least the causal LSN (and at least
//   pgrelay.min_lsn); until the probe has answered, or while no replica has caught up, the read
//   waits up to routing.ryw.max_wait, then runs on the primary.
// quorum: each read takes a read index, the primary's WAL LSN read after the read arrived (the
//   probe confirms the node is still primary; concurrent reads share one probe), and goes only
//   to a replica that has replayed it, waiting up to routing.quorum.max_wait, else the primary.
#include <algorithm>

#include "config/log.h"
#include "health/probe_sample.h"
#include "health/sync_standby.h"
#include "proxy/client_session.h"
#include "proxy/pgrelay_settings.h"
#include "proxy/protocol/messages.h"

namespace pgrelay::proxy {

namespace {

using Clock = std::chrono::steady_clock;
namespace sqlstate = protocol::sqlstate;

admin::ConsistencyStrategy MetricStrategy(config::Strategy s) {
  return s == config::Strategy::kQuorum ? admin::ConsistencyStrategy::kQuorum
                                        : admin::ConsistencyStrategy::kReadYourWrites;
}

std::string LsnText(uint64_t lsn) { return health::FormatLsn(lsn); }

}  // namespace

void ClientSession::FillReplayView(const health::Topology& topology) {
  replay_view_.resize(topology.nodes.size());
  for (size_t i = 0; i < topology.nodes.size(); ++i) {
    replay_view_[i] = std::max(topology.nodes[i].replay_lsn, ctx_.lsn->ReplayLsn(i));
  }
}

awaitable<routing::RouteResult> ClientSession::RouteConsistent(
    const routing::UnitTraits& traits, const routing::SessionRouting& session,
    std::shared_ptr<const health::Topology>* topology) {
  const bool quorum = strategy_ == config::Strategy::kQuorum;
  const Clock::time_point arrived = Clock::now();
  const Clock::time_point deadline =
      arrived + (quorum ? config_->routing.quorum_max_wait : config_->routing.ryw_max_wait);
  uint64_t need = min_lsn_;
  bool known = true;  // `need` is complete
  if (quorum) {
    const uint64_t index = co_await ReadIndex(arrived);
    if (index == 0) co_return co_await QuorumWithoutPrimary(traits, session, topology, arrived);
    need = std::max(need, index);
  } else {
    ResolveCommit();
    need = std::max(need, causal_lsn_);
    known = !commit_unresolved_;
  }
  bool waited = false;
  for (;;) {
    *topology = ctx_.monitor->Snapshot();
    const bool expired = Clock::now() >= deadline || ending_;
    if (known || expired) {
      FillReplayView(**topology);
      routing::LsnBound bound{known ? need : UINT64_MAX, replay_view_};
      routing::RouteResult r =
          worker_.router.Route(traits, session, **topology, worker_.in_flight, &bound);
      if (!(r.fell_back && r.behind) || expired) {
        const auto strategy = MetricStrategy(strategy_);
        if (waited) {
          worker_.metrics->Inc(ctx_.metrics->consistency_waits.At(strategy));
          worker_.metrics->Observe(ctx_.metrics->consistency_wait_duration.At(strategy),
                                   std::chrono::duration<double>(Clock::now() - arrived).count());
        }
        if (r.fell_back && r.behind) {
          worker_.metrics->Inc(ctx_.metrics->consistency_fallbacks.At(strategy));
        }
        co_return r;
      }
      // Every usable replica is behind: ask them where they are now, then look again.
      std::weak_ptr<ClientSession*> token = self_;
      ctx_.lsn->RequestReplayLsns(client_.get_executor(), [token] {
        if (auto s = token.lock()) (*s)->WakeLsn();
      });
    } else if (!commit_probe_outstanding_) {
      RequestCommitLsn();
    }
    waited = true;
    co_await WaitLsn(deadline);
    if (!known) {
      ResolveCommit();
      if (!commit_unresolved_) {
        need = std::max(need, causal_lsn_);
        known = true;
      }
    }
  }
}

awaitable<routing::RouteResult> ClientSession::QuorumWithoutPrimary(
    const routing::UnitTraits& traits, const routing::SessionRouting& session,
    std::shared_ptr<const health::Topology>* topology, Clock::time_point arrived) {
  *topology = ctx_.monitor->Snapshot();
  // The commit settings of the node that was primary last.
  std::optional<health::SyncStandbys> sync;
  for (const health::NodeStatus& n : (*topology)->nodes) {
    if (n.role == health::NodeRole::kPrimary && n.synchronous_commit == "remote_apply") {
      sync = health::ParseSynchronousStandbyNames(n.synchronous_standby_names);
    }
  }
  if (!sync) {
    // No replica can be proven current. The primary itself is, if one is known (the route
    // fails clearly if there is none).
    routing::LsnBound never{UINT64_MAX, {}};
    routing::RouteResult r =
        worker_.router.Route(traits, session, **topology, worker_.in_flight, &never);
    if (r.to_primary && r.node >= 0) {
      worker_.metrics->Inc(ctx_.metrics->consistency_fallbacks.At(MetricStrategy(strategy_)));
    } else {
      r.node = -1;
      r.to_primary = false;
      r.error =
          "quorum read refused: no primary answers to take a read index from, and the cluster "
          "does not run quorum commit (synchronous_standby_names with synchronous_commit = "
          "remote_apply), so no replica can be proven current";
    }
    co_return r;
  }
  // Ask the standbys where they are now: any ReadQuorum() of the named ones include one that has
  // applied every acknowledged commit, and the most advanced of them has them all.
  auto done = std::make_shared<bool>(false);
  std::weak_ptr<ClientSession*> token = self_;
  ctx_.lsn->RequestReplayLsns(client_.get_executor(), [done, token] {
    *done = true;
    if (auto s = token.lock()) (*s)->WakeLsn();
  });
  const Clock::time_point limit = Clock::now() + config_->health.timeout + std::chrono::seconds(1);
  while (!*done && !ending_ && Clock::now() < limit) co_await WaitLsn(limit);
  *topology = ctx_.monitor->Snapshot();
  int answered = 0;
  routing::RouteResult r;
  uint64_t best = 0;
  for (size_t i = 0; i < (*topology)->nodes.size(); ++i) {
    const health::NodeStatus& node = (*topology)->nodes[i];
    if (node.removed) continue;
    const bool named = std::any_of(sync->names.begin(), sync->names.end(), [&](const auto& name) {
      return health::StandbyNameMatches(node.standby_name.empty() ? node.name : node.standby_name,
                                        name);
    });
    if (!named || ctx_.lsn->ReplayAnsweredSince(i) < arrived) continue;
    ++answered;
    const uint64_t lsn = ctx_.lsn->ReplayLsn(i);
    if (r.node < 0 || lsn > best) {
      r.node = static_cast<int>(i);
      best = lsn;
    }
  }
  if (answered >= sync->ReadQuorum()) {
    PGRELAY_LOG(kDebug, "session",
                "client " << peer_ << ": quorum read without the primary on "
                          << (*topology)->nodes[r.node].name << " (" << answered
                          << " standbys answered)");
    co_return r;
  }
  r.node = -1;
  r.error =
      "quorum read refused: the primary is unreachable and fewer synchronous standbys answered "
      "than a read quorum needs (n - k + 1 of synchronous_standby_names), so no replica can be "
      "proven current";
  co_return r;
}

awaitable<uint64_t> ClientSession::ReadIndex(Clock::time_point arrived) {
  if (uint64_t lsn = ctx_.lsn->PrimaryLsnSince(arrived)) co_return lsn;
  auto result = std::make_shared<std::optional<uint64_t>>();
  std::weak_ptr<ClientSession*> token = self_;
  ctx_.lsn->RequestPrimaryLsn(arrived, client_.get_executor(), [result, token](uint64_t lsn) {
    *result = lsn;
    if (auto s = token.lock()) (*s)->WakeLsn();
  });
  // The tracker answers within health.timeout; the margin covers its queueing.
  const Clock::time_point limit = Clock::now() + config_->health.timeout + std::chrono::seconds(1);
  while (!result->has_value() && !ending_ && Clock::now() < limit) co_await WaitLsn(limit);
  co_return result->value_or(0);
}

awaitable<void> ClientSession::WaitLsn(Clock::time_point deadline) {
  lsn_timer_.expires_at(deadline);
  lsn_waiting_ = true;
  co_await lsn_timer_.async_wait(kNoThrow);
  lsn_waiting_ = false;
}

void ClientSession::WakeLsn() {
  if (lsn_waiting_) lsn_timer_.cancel();
}

void ClientSession::NoteCommit() {
  commit_time_ = Clock::now();
  commit_unresolved_ = true;
  RequestCommitLsn();
}

void ClientSession::RequestCommitLsn() {
  commit_probe_outstanding_ = true;
  std::weak_ptr<ClientSession*> token = self_;
  const Clock::time_point since = commit_time_;
  ctx_.lsn->RequestPrimaryLsn(since, client_.get_executor(), [token, since](uint64_t lsn) {
    if (auto s = token.lock()) (*s)->OnCommitLsn(since, lsn);
  });
}

void ClientSession::OnCommitLsn(Clock::time_point since, uint64_t lsn) {
  commit_probe_outstanding_ = false;
  if (lsn != 0 && lsn > causal_lsn_) {
    causal_lsn_ = lsn;
    QueueCausalStatus();
  }
  // A probe sent after the latest commit covers it; an older probe leaves it unresolved.
  if (lsn != 0 && since >= commit_time_) commit_unresolved_ = false;
  if (commit_unresolved_ && lsn != 0) RequestCommitLsn();
  WakeLsn();
}

void ClientSession::ResolveCommit() {
  if (!commit_unresolved_) return;
  const uint64_t lsn = ctx_.lsn->PrimaryLsnSince(commit_time_);
  if (lsn == 0) return;
  commit_unresolved_ = false;
  if (lsn > causal_lsn_) {
    causal_lsn_ = lsn;
    QueueCausalStatus();
  }
}

void ClientSession::QueueCausalStatus() {
  status_pending_.clear();
  protocol::AppendParameterStatus(&status_pending_, kCausalLsnSetting, LsnText(causal_lsn_));
}

std::string ClientSession::SetPgrelaySetting(std::string_view name, std::string_view value) {
  if (name == kMinLsnSetting) {
    if (value.empty()) {
      min_lsn_ = 0;
      return {};
    }
    const std::optional<uint64_t> lsn = health::ParseLsn(value);
    if (!lsn) {
      return "invalid value for parameter \"" + std::string(name) + "\": \"" + std::string(value) +
             "\"";
    }
    min_lsn_ = *lsn;
    return {};
  }
  return "unrecognized configuration parameter \"" + std::string(name) + "\"";
}

awaitable<bool> ClientSession::HandlePgrelayCommand(std::string_view sql,
                                                    const routing::Classification& c) {
  const PgrelayCommand cmd = ParsePgrelayCommand(sql, c);
  using Kind = PgrelayCommand::Kind;
  if (cmd.kind == Kind::kNone) co_return false;
  const bool known =
      cmd.name == kMinLsnSetting || cmd.name == kCausalLsnSetting || cmd.name == kStrategySetting;
  std::string messages;
  if (!known) {
    const std::string message = "unrecognized configuration parameter \"" + cmd.name + "\"";
    protocol::AppendError(&messages, "ERROR", sqlstate::kUndefinedObject, message,
                          "pgrelay's settings are pgrelay.min_lsn, pgrelay.causal_lsn and "
                          "pgrelay.strategy.");
  } else if (cmd.kind == Kind::kShow) {
    std::string value;
    if (cmd.name == kStrategySetting) {
      value = std::string(config::ToString(strategy_));
    } else if (cmd.name == kMinLsnSetting) {
      value = LsnText(min_lsn_);
    } else {
      // The causal LSN of a commit whose probe is still out: wait for it (bounded).
      const Clock::time_point limit =
          Clock::now() + config_->health.timeout + std::chrono::seconds(1);
      ResolveCommit();
      while (commit_unresolved_ && !ending_ && Clock::now() < limit) {
        if (!commit_probe_outstanding_) RequestCommitLsn();
        co_await WaitLsn(limit);
        ResolveCommit();
      }
      value = LsnText(causal_lsn_);
    }
    protocol::MessageWriter w(&messages);
    w.Begin('T')
        .Int16(1)
        .CString(cmd.name)
        .Int32(0)
        .Int16(0)
        .Int32(25 /* text */)
        .Int16(-1)
        .Int32(-1)
        .Int16(0)
        .End();
    w.Begin('D').Int16(1).Int32(static_cast<int32_t>(value.size())).Bytes(value).End();
    w.Begin('C').CString("SHOW").End();
  } else if (cmd.name != kMinLsnSetting) {
    const std::string message = "parameter \"" + cmd.name + "\" cannot be changed";
    protocol::AppendError(&messages, "ERROR", sqlstate::kCantChangeRuntimeParam, message);
  } else if (cmd.local) {
    protocol::AppendError(&messages, "ERROR", sqlstate::kFeatureNotSupported,
                          "SET LOCAL is not supported for pgrelay.min_lsn",
                          "Use SET pgrelay.min_lsn; pgrelay's settings are not transactional.");
  } else {
    const std::string error =
        SetPgrelaySetting(cmd.name, cmd.kind == Kind::kSet ? cmd.value : std::string());
    if (error.empty()) {
      protocol::MessageWriter(&messages)
          .Begin('C')
          .CString(cmd.kind == Kind::kSet ? "SET" : "RESET")
          .End();
    } else {
      protocol::AppendError(&messages, "ERROR", sqlstate::kInvalidParameterValue, error,
                            "Use an LSN such as 0/3000060, as pgrelay.causal_lsn reports it.");
    }
  }
  co_await RespondLocal(messages);
  co_return true;
}

awaitable<void> ClientSession::RespondLocal(std::string_view messages) {
  co_await Flush();
  co_await WaitCurrentDone();
  if (ending_) co_return;
  reply_.clear();
  reply_.append(messages);
  if (status_sending_.empty()) {
    reply_.append(status_pending_);
    status_pending_.clear();
  }
  protocol::AppendReadyForQuery(&reply_, tx_status_);
  std::vector<asio::const_buffer> out{asio::buffer(reply_)};
  co_await WriteToClient(out);
}

}  // namespace pgrelay::proxy
