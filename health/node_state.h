// NodeState: the health state machine of one node (up / suspect / down with hysteresis, role,
// last sample), fed probe outcomes. Pure logic, no I/O or clock reads; not thread-safe (the
// monitor owns one per node on its thread).
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "health/probe_sample.h"
#include "health/topology.h"

namespace pgrelay::health {

struct HealthThresholds {
  int failure_threshold = 3;   // consecutive failures: suspect (1) ... down (failure_threshold)
  int recovery_threshold = 2;  // consecutive successes for a down node to be up again
};

// What one event changed, for logging and publishing.
struct NodeTransition {
  NodeHealth old_state = NodeHealth::kDown;
  NodeHealth new_state = NodeHealth::kDown;
  NodeRole old_role = NodeRole::kUnknown;
  NodeRole new_role = NodeRole::kUnknown;
  bool first_result = false;  // the node's first probe result ever
  bool counted = true;        // false: a late probe that did not count as a failure

  bool StateChanged() const { return old_state != new_state; }
  bool RoleChanged() const { return old_role != new_role; }
};

class NodeState {
 public:
  using Clock = std::chrono::steady_clock;

  explicit NodeState(HealthThresholds thresholds = {});

  // A probe answered. The role follows the sample at once; a suspect node is up again at once; a
  // down node after recovery_threshold consecutive successes (or at once if it was never up).
  NodeTransition OnSuccess(const ProbeSample& sample, Clock::time_point now);
  // A probe failed (error or timeout): suspect after 1, down after failure_threshold in a row.
  // The role and the last sample are kept.
  NodeTransition OnFailure(std::string_view error, Clock::time_point now);
  // An interval passed while the node's probe is still unanswered (not yet timed out). Counts as
  // a failure only once the node is already failing, so a slow but healthy node is judged by the
  // probe timeout, while a node that failed once must answer every interval: a hung node is down
  // within timeout + (failure_threshold - 1) x interval.
  NodeTransition OnLate(std::string_view what, Clock::time_point now);

  // Reserved for the failover controller: a fenced node stays fenced whatever the probes say
  // (they still update role, sample and counters). Unfenced, it is up only after
  // recovery_threshold consecutive successes.
  void SetFenced(bool fenced);
  // A config reload changed health.failure_threshold / recovery_threshold.
  void SetThresholds(HealthThresholds thresholds) { thresholds_ = thresholds; }

  NodeHealth health() const { return health_; }
  NodeRole role() const { return role_; }
  bool ever_answered() const { return ever_answered_; }
  bool last_probe_ok() const { return last_probe_ok_; }
  int consecutive_failures() const { return failures_; }
  int consecutive_successes() const { return successes_; }
  Clock::time_point last_probe() const { return last_probe_; }
  Clock::time_point last_success() const { return last_success_; }
  const ProbeSample& sample() const { return sample_; }  // last successful probe's sample
  const std::string& last_error() const { return last_error_; }

  // Copies state, role and sample into *status (lag fields are left to BuildTopology).
  void Fill(NodeStatus* status) const;

 private:
  NodeTransition Begin() const;
  NodeTransition CountFailure(Clock::time_point now);

  HealthThresholds thresholds_;
  NodeHealth health_ = NodeHealth::kDown;
  NodeRole role_ = NodeRole::kUnknown;
  bool fenced_ = false;
  bool ever_answered_ = false;
  bool ever_probed_ = false;
  bool ever_up_ = false;
  bool last_probe_ok_ = false;
  int failures_ = 0;
  uint64_t failures_total_ = 0;  // every failed or late probe since start
  int successes_ = 0;
  Clock::time_point last_probe_{};
  Clock::time_point last_success_{};
  ProbeSample sample_;
  std::string last_error_;
};

}  // namespace pgrelay::health
