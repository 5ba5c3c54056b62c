// Unit tests for NodeState: the per-node health state machine (hysteresis, roles, late probes).
#include "health/node_state.h"

#include <gtest/gtest.h>

#include <chrono>

namespace pgrelay::health {
namespace {

using namespace std::chrono_literals;

ProbeSample Primary() {
  ProbeSample s;
  s.in_recovery = false;
  s.current_lsn = 0x5000000;
  s.timeline = 1;
  return s;
}

ProbeSample Replica() {
  ProbeSample s;
  s.in_recovery = true;
  s.receive_lsn = 0x4000000;
  s.replay_lsn = 0x3000000;
  s.replay_lag_seconds = 1.5;
  s.wal_receiver_status = "streaming";
  s.timeline = 1;
  return s;
}

class NodeStateTest : public ::testing::Test {
 protected:
  NodeState::Clock::time_point Tick() { return now_ += 500ms; }

  NodeState::Clock::time_point now_{};
  NodeState state_{HealthThresholds{3, 2}};
};

TEST_F(NodeStateTest, StartsDownWithUnknownRole) {
  EXPECT_EQ(state_.health(), NodeHealth::kDown);
  EXPECT_EQ(state_.role(), NodeRole::kUnknown);
  EXPECT_FALSE(state_.ever_answered());
  NodeStatus s;
  state_.Fill(&s);
  EXPECT_EQ(s.state, NodeHealth::kDown);
  EXPECT_FALSE(s.up);
  EXPECT_EQ(s.last_probe, NodeState::Clock::time_point{});
}

TEST_F(NodeStateTest, FirstAnswerIsUpAtOnce) {
  const NodeTransition t = state_.OnSuccess(Primary(), Tick());
  EXPECT_TRUE(t.first_result);
  EXPECT_TRUE(t.StateChanged());
  EXPECT_TRUE(t.RoleChanged());
  EXPECT_EQ(t.new_state, NodeHealth::kUp);
  EXPECT_EQ(t.new_role, NodeRole::kPrimary);
  EXPECT_EQ(state_.consecutive_successes(), 1);
}

TEST_F(NodeStateTest, FirstProbeFailingStaysDown) {
  const NodeTransition t = state_.OnFailure("connection refused", Tick());
  EXPECT_TRUE(t.first_result);
  EXPECT_FALSE(t.StateChanged());
  EXPECT_EQ(state_.health(), NodeHealth::kDown);
  EXPECT_EQ(state_.last_error(), "connection refused");
  // Never up before: the first answer makes it up without waiting for recovery_threshold.
  EXPECT_EQ(state_.OnSuccess(Replica(), Tick()).new_state, NodeHealth::kUp);
}

TEST_F(NodeStateTest, SuspectAfterOneFailureDownAfterThreshold) {
  state_.OnSuccess(Replica(), Tick());
  NodeTransition t = state_.OnFailure("timeout", Tick());
  EXPECT_FALSE(t.first_result);
  EXPECT_EQ(t.old_state, NodeHealth::kUp);
  EXPECT_EQ(t.new_state, NodeHealth::kSuspect);
  EXPECT_FALSE(t.RoleChanged());
  t = state_.OnFailure("timeout", Tick());
  EXPECT_FALSE(t.StateChanged());
  EXPECT_EQ(state_.health(), NodeHealth::kSuspect);
  t = state_.OnFailure("refused", Tick());
  EXPECT_EQ(t.old_state, NodeHealth::kSuspect);
  EXPECT_EQ(t.new_state, NodeHealth::kDown);
  EXPECT_EQ(state_.consecutive_failures(), 3);
  EXPECT_EQ(state_.last_error(), "refused");
  t = state_.OnFailure("refused", Tick());
  EXPECT_FALSE(t.StateChanged());
  EXPECT_EQ(state_.consecutive_failures(), 4);
}

TEST_F(NodeStateTest, KeepsRoleAndSampleWhileFailing) {
  state_.OnSuccess(Replica(), Tick());
  for (int i = 0; i < 5; ++i) state_.OnFailure("down", Tick());
  EXPECT_EQ(state_.health(), NodeHealth::kDown);
  EXPECT_EQ(state_.role(), NodeRole::kReplica);
  NodeStatus s;
  state_.Fill(&s);
  EXPECT_FALSE(s.up);
  EXPECT_EQ(s.role, NodeRole::kReplica);
  EXPECT_EQ(s.replay_lsn, 0x3000000u);
  EXPECT_EQ(s.last_error, "down");
  EXPECT_EQ(s.consecutive_failures, 5);
}

TEST_F(NodeStateTest, SuspectRecoversWithOneSuccess) {
  state_.OnSuccess(Replica(), Tick());
  state_.OnFailure("blip", Tick());
  state_.OnFailure("blip", Tick());
  const NodeTransition t = state_.OnSuccess(Replica(), Tick());
  EXPECT_EQ(t.old_state, NodeHealth::kSuspect);
  EXPECT_EQ(t.new_state, NodeHealth::kUp);
  EXPECT_EQ(state_.consecutive_failures(), 0);
  EXPECT_TRUE(state_.last_error().empty());
  // The failure count starts again from zero.
  EXPECT_EQ(state_.OnFailure("x", Tick()).new_state, NodeHealth::kSuspect);
}

TEST_F(NodeStateTest, DownNeedsRecoveryThresholdSuccesses) {
  state_.OnSuccess(Replica(), Tick());
  for (int i = 0; i < 3; ++i) state_.OnFailure("down", Tick());
  ASSERT_EQ(state_.health(), NodeHealth::kDown);
  NodeTransition t = state_.OnSuccess(Replica(), Tick());
  EXPECT_FALSE(t.StateChanged());
  EXPECT_EQ(state_.health(), NodeHealth::kDown);
  EXPECT_TRUE(state_.last_probe_ok());
  // A failure in between restarts the count.
  state_.OnFailure("flap", Tick());
  EXPECT_EQ(state_.consecutive_successes(), 0);
  EXPECT_EQ(state_.OnSuccess(Replica(), Tick()).new_state, NodeHealth::kDown);
  t = state_.OnSuccess(Replica(), Tick());
  EXPECT_EQ(t.old_state, NodeHealth::kDown);
  EXPECT_EQ(t.new_state, NodeHealth::kUp);
}

TEST_F(NodeStateTest, RoleChangeIsReportedImmediately) {
  state_.OnSuccess(Replica(), Tick());
  const NodeTransition t = state_.OnSuccess(Primary(), Tick());
  EXPECT_FALSE(t.StateChanged());
  EXPECT_TRUE(t.RoleChanged());
  EXPECT_EQ(t.old_role, NodeRole::kReplica);
  EXPECT_EQ(t.new_role, NodeRole::kPrimary);
  EXPECT_EQ(state_.sample().current_lsn, 0x5000000u);
}

TEST_F(NodeStateTest, RoleChangeWhileDownIsReportedButStateWaits) {
  state_.OnSuccess(Primary(), Tick());
  for (int i = 0; i < 3; ++i) state_.OnFailure("down", Tick());
  const NodeTransition t = state_.OnSuccess(Replica(), Tick());
  EXPECT_TRUE(t.RoleChanged());
  EXPECT_FALSE(t.StateChanged());
  EXPECT_EQ(state_.health(), NodeHealth::kDown);
  EXPECT_EQ(state_.role(), NodeRole::kReplica);
}

TEST_F(NodeStateTest, LateProbeOfAHealthyNodeDoesNotCount) {
  state_.OnSuccess(Replica(), Tick());
  for (int i = 0; i < 10; ++i) {
    const NodeTransition t = state_.OnLate("slow", Tick());
    EXPECT_FALSE(t.counted);
    EXPECT_FALSE(t.StateChanged());
  }
  EXPECT_EQ(state_.health(), NodeHealth::kUp);
  EXPECT_EQ(state_.consecutive_failures(), 0);
  EXPECT_TRUE(state_.last_error().empty());
}

TEST_F(NodeStateTest, LateProbeOfAFailingNodeCounts) {
  // A hung node: the first probe times out, then every interval without an answer counts, so it
  // is down within timeout + (failure_threshold - 1) x interval.
  state_.OnSuccess(Primary(), Tick());
  EXPECT_EQ(state_.OnFailure("timed out", Tick()).new_state, NodeHealth::kSuspect);
  NodeTransition t = state_.OnLate("no answer for 500 ms", Tick());
  EXPECT_TRUE(t.counted);
  EXPECT_EQ(state_.health(), NodeHealth::kSuspect);
  t = state_.OnLate("no answer for 1000 ms", Tick());
  EXPECT_EQ(t.new_state, NodeHealth::kDown);
  EXPECT_EQ(state_.last_error(), "no answer for 1000 ms");
  EXPECT_EQ(state_.role(), NodeRole::kPrimary);
}

TEST_F(NodeStateTest, ThresholdOfOneGoesStraightDown) {
  NodeState s(HealthThresholds{1, 1});
  s.OnSuccess(Replica(), Tick());
  const NodeTransition t = s.OnFailure("refused", Tick());
  EXPECT_EQ(t.old_state, NodeHealth::kUp);
  EXPECT_EQ(t.new_state, NodeHealth::kDown);
  EXPECT_EQ(s.OnSuccess(Replica(), Tick()).new_state, NodeHealth::kUp);
}

TEST_F(NodeStateTest, InvalidThresholdsAreClampedToOne) {
  NodeState s(HealthThresholds{0, -3});
  s.OnSuccess(Replica(), Tick());
  EXPECT_EQ(s.OnFailure("x", Tick()).new_state, NodeHealth::kDown);
  EXPECT_EQ(s.OnSuccess(Replica(), Tick()).new_state, NodeHealth::kUp);
}

TEST_F(NodeStateTest, FencedStaysFencedUntilUnfenced) {
  state_.OnSuccess(Primary(), Tick());
  state_.SetFenced(true);
  EXPECT_EQ(state_.health(), NodeHealth::kFenced);
  EXPECT_EQ(state_.OnSuccess(Primary(), Tick()).new_state, NodeHealth::kFenced);
  EXPECT_EQ(state_.OnFailure("x", Tick()).new_state, NodeHealth::kFenced);
  state_.SetFenced(false);
  EXPECT_EQ(state_.health(), NodeHealth::kDown);  // last probe failed
  state_.OnSuccess(Replica(), Tick());
  EXPECT_EQ(state_.health(), NodeHealth::kDown);
  state_.OnSuccess(Replica(), Tick());
  EXPECT_EQ(state_.health(), NodeHealth::kUp);
  state_.SetFenced(true);
  state_.SetFenced(false);
  EXPECT_EQ(state_.health(), NodeHealth::kUp);  // enough good probes already
}

TEST_F(NodeStateTest, FillCopiesTheSample) {
  const auto when = Tick();
  state_.OnSuccess(Replica(), when);
  NodeStatus s;
  state_.Fill(&s);
  EXPECT_EQ(s.state, NodeHealth::kUp);
  EXPECT_EQ(s.role, NodeRole::kReplica);
  EXPECT_TRUE(s.up);
  EXPECT_EQ(s.receive_lsn, 0x4000000u);
  EXPECT_EQ(s.replay_lsn, 0x3000000u);
  EXPECT_EQ(s.current_lsn, 0u);
  EXPECT_EQ(s.timeline, 1u);
  ASSERT_TRUE(s.wal_receiver_streaming.has_value());
  EXPECT_TRUE(*s.wal_receiver_streaming);
  ASSERT_TRUE(s.replay_lag_seconds.has_value());
  EXPECT_DOUBLE_EQ(*s.replay_lag_seconds, 1.5);
  EXPECT_FALSE(s.replay_lag_bytes.has_value());  // BuildTopology's job
  EXPECT_EQ(s.consecutive_successes, 1);
  EXPECT_EQ(s.last_probe, when);
}

}  // namespace
}  // namespace pgrelay::health
