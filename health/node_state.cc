#include "health/node_state.h"

#include <algorithm>

namespace pgrelay::health {

NodeState::NodeState(HealthThresholds thresholds) : thresholds_(thresholds) {
  thresholds_.failure_threshold = std::max(1, thresholds_.failure_threshold);
  thresholds_.recovery_threshold = std::max(1, thresholds_.recovery_threshold);
}

NodeTransition NodeState::Begin() const {
  NodeTransition t;
  t.old_state = health_;
  t.old_role = role_;
  t.first_result = !ever_probed_;
  return t;
}

NodeTransition NodeState::OnSuccess(const ProbeSample& sample, Clock::time_point now) {
  NodeTransition t = Begin();
  ever_probed_ = true;
  ever_answered_ = true;
  last_probe_ok_ = true;
  last_probe_ = now;
  last_success_ = now;
  last_error_.clear();
  failures_ = 0;
  ++successes_;
  sample_ = sample;
  role_ = sample.in_recovery ? NodeRole::kReplica : NodeRole::kPrimary;
  switch (health_) {
    case NodeHealth::kUp:
    case NodeHealth::kFenced:
      break;
    case NodeHealth::kSuspect:
      health_ = NodeHealth::kUp;
      break;
    case NodeHealth::kDown:
      // A node never seen up has no flapping to damp: up at its first answer.
      if (!ever_up_ || successes_ >= thresholds_.recovery_threshold) health_ = NodeHealth::kUp;
      break;
  }
  if (health_ == NodeHealth::kUp) ever_up_ = true;
  t.new_state = health_;
  t.new_role = role_;
  return t;
}

NodeTransition NodeState::CountFailure(Clock::time_point now) {
  NodeTransition t = Begin();
  ever_probed_ = true;
  last_probe_ok_ = false;
  last_probe_ = now;
  successes_ = 0;
  ++failures_;
  switch (health_) {
    case NodeHealth::kUp:
    case NodeHealth::kSuspect:
      health_ =
          failures_ >= thresholds_.failure_threshold ? NodeHealth::kDown : NodeHealth::kSuspect;
      break;
    case NodeHealth::kDown:
    case NodeHealth::kFenced:
      break;
  }
  t.new_state = health_;
  t.new_role = role_;
  return t;
}

NodeTransition NodeState::OnFailure(std::string_view error, Clock::time_point now) {
  last_error_ = error;
  ++failures_total_;
  return CountFailure(now);
}

NodeTransition NodeState::OnLate(std::string_view what, Clock::time_point now) {
  if (failures_ == 0) {
    NodeTransition t = Begin();
    t.first_result = false;
    t.new_state = health_;
    t.new_role = role_;
    t.counted = false;
    return t;
  }
  last_error_ = what;
  ++failures_total_;
  return CountFailure(now);
}

void NodeState::SetFenced(bool fenced) {
  if (fenced) {
    health_ = NodeHealth::kFenced;
  } else if (health_ == NodeHealth::kFenced) {
    health_ = failures_ == 0 && successes_ >= thresholds_.recovery_threshold ? NodeHealth::kUp
                                                                             : NodeHealth::kDown;
  }
}

void NodeState::Fill(NodeStatus* status) const {
  status->state = health_;
  status->probe_failures_total = failures_total_;
  status->role = role_;
  status->up = last_probe_ok_;
  status->last_error = last_error_;
  status->current_lsn = sample_.current_lsn;
  status->receive_lsn = sample_.receive_lsn;
  status->replay_lsn = sample_.replay_lsn;
  status->timeline = sample_.timeline;
  status->replay_paused = sample_.replay_paused;
  status->synchronous_standby_names = sample_.synchronous_standby_names;
  status->synchronous_commit = sample_.synchronous_commit;
  status->standby_name = sample_.standby_name;
  status->wal_receiver_streaming = sample_.WalReceiverStreaming();
  status->replay_lag_seconds = sample_.replay_lag_seconds;
  status->replay_lag_bytes.reset();
  status->consecutive_failures = failures_;
  status->consecutive_successes = successes_;
  status->last_probe = last_probe_;
}

}  // namespace pgrelay::health
