// Unit tests for BuildTopology (primary choice, conflicts, lag) and Topology's routing helpers.
#include "health/topology_builder.h"

#include <gtest/gtest.h>

#include <chrono>

namespace pgrelay::health {
namespace {

using std::chrono::milliseconds;

NodeStatus Primary(const char* name, uint64_t lsn, NodeHealth state = NodeHealth::kUp) {
  NodeStatus n;
  n.name = name;
  n.state = state;
  n.role = NodeRole::kPrimary;
  n.up = state == NodeHealth::kUp;
  n.current_lsn = lsn;
  n.timeline = 1;
  return n;
}

NodeStatus Replica(const char* name, uint64_t receive, uint64_t replay, double lag_s,
                   NodeHealth state = NodeHealth::kUp) {
  NodeStatus n;
  n.name = name;
  n.state = state;
  n.role = NodeRole::kReplica;
  n.up = state == NodeHealth::kUp;
  n.receive_lsn = receive;
  n.replay_lsn = replay;
  n.replay_lag_seconds = lag_s;
  n.timeline = 1;
  return n;
}

TEST(BuildTopologyTest, OnePrimaryTwoReplicas) {
  const Topology t = BuildTopology(
      {Primary("pg1", 1000), Replica("pg2", 1000, 1000, 0), Replica("pg3", 900, 400, 2.5)}, 7, 3);
  EXPECT_EQ(t.version, 7u);
  EXPECT_EQ(t.epoch, 3u);
  ASSERT_EQ(t.primary, 0);
  EXPECT_FALSE(t.primary_conflict);
  ASSERT_NE(t.Primary(), nullptr);
  EXPECT_EQ(t.Primary()->name, "pg1");
  EXPECT_EQ(t.nodes[0].replay_lag_bytes, 0u);
  EXPECT_EQ(t.nodes[0].replay_lag_seconds, 0.0);
  EXPECT_EQ(t.nodes[1].replay_lag_bytes, 0u);
  EXPECT_EQ(t.nodes[2].replay_lag_bytes, 600u);
  EXPECT_EQ(t.nodes[2].replay_lag_seconds, 2.5);
  EXPECT_EQ(t.replicas, (std::vector<int>{1, 2}));
  EXPECT_EQ(t.Find("pg3"), &t.nodes[2]);
  EXPECT_EQ(t.Find("nope"), nullptr);
}

TEST(BuildTopologyTest, ReplicaAheadOfAnEarlierPrimaryReadingIsNotNegative) {
  const Topology t = BuildTopology({Primary("pg1", 1000), Replica("pg2", 1200, 1100, 0)}, 1, 0);
  EXPECT_EQ(t.nodes[1].replay_lag_bytes, 0u);
}

TEST(BuildTopologyTest, SuspectPrimaryKeepsTheWrites) {
  const Topology t = BuildTopology(
      {Primary("pg1", 1000, NodeHealth::kSuspect), Replica("pg2", 900, 900, 0)}, 1, 0);
  EXPECT_EQ(t.primary, 0);
  EXPECT_EQ(t.nodes[1].replay_lag_bytes, 100u);
}

TEST(BuildTopologyTest, DownPrimaryIsNoPrimaryAndLagIsAgainstTheBestReplica) {
  const Topology t = BuildTopology({Primary("pg1", 5000, NodeHealth::kDown),
                                    Replica("pg2", 900, 800, 1), Replica("pg3", 700, 600, 1)},
                                   1, 0);
  EXPECT_EQ(t.primary, -1);
  EXPECT_FALSE(t.primary_conflict);
  EXPECT_EQ(t.Primary(), nullptr);
  EXPECT_FALSE(t.nodes[0].replay_lag_bytes.has_value());
  EXPECT_EQ(t.nodes[1].replay_lag_bytes, 100u);
  EXPECT_EQ(t.nodes[2].replay_lag_bytes, 300u);
  EXPECT_EQ(t.replicas, (std::vector<int>{1, 2}));
}

TEST(BuildTopologyTest, TwoConfirmedPrimariesIsAConflict) {
  const Topology t =
      BuildTopology({Primary("pg1", 1000), Primary("pg2", 2000), Replica("pg3", 10, 10, 0)}, 1, 0);
  EXPECT_EQ(t.primary, -1);
  EXPECT_TRUE(t.primary_conflict);
  EXPECT_EQ(t.Primary(), nullptr);
  EXPECT_EQ(t.replicas, (std::vector<int>{2}));
}

TEST(BuildTopologyTest, ConfirmedClaimBeatsTheStaleClaimOfASuspectNode) {
  // pg1 stopped answering as primary; pg2 was promoted outside pgrelay and answers as primary.
  NodeStatus old_primary = Primary("pg1", 1000, NodeHealth::kSuspect);
  old_primary.up = false;
  const Topology t = BuildTopology({old_primary, Primary("pg2", 2000)}, 1, 0);
  EXPECT_EQ(t.primary, 1);
  EXPECT_FALSE(t.primary_conflict);
}

TEST(BuildTopologyTest, WithOnlyStaleClaimsThePreviousPrimaryStays) {
  NodeStatus a = Primary("a", 1000, NodeHealth::kSuspect);
  NodeStatus b = Primary("b", 2000, NodeHealth::kSuspect);
  a.up = b.up = false;
  Topology t = BuildTopology({a, b}, 1, 0, /*previous_primary=*/1);
  EXPECT_EQ(t.primary, 1);
  EXPECT_FALSE(t.primary_conflict);
  t = BuildTopology({a, b}, 1, 0, /*previous_primary=*/-1);
  EXPECT_EQ(t.primary, -1);
  EXPECT_TRUE(t.primary_conflict);
  // Two confirmed claims are a conflict whatever the previous primary was.
  t = BuildTopology({Primary("a", 1000), Primary("b", 2000)}, 1, 0, /*previous_primary=*/0);
  EXPECT_EQ(t.primary, -1);
  EXPECT_TRUE(t.primary_conflict);
}

TEST(BuildTopologyTest, DownOrFencedNodesDoNotClaimPrimary) {
  const Topology t = BuildTopology({Primary("pg1", 1000, NodeHealth::kDown), Primary("pg2", 2000),
                                    Primary("pg3", 3000, NodeHealth::kFenced)},
                                   1, 0);
  EXPECT_EQ(t.primary, 1);
  EXPECT_FALSE(t.primary_conflict);
}

TEST(BuildTopologyTest, NoNodesAnsweredYet) {
  NodeStatus unknown;
  unknown.name = "pg1";
  const Topology t = BuildTopology({unknown}, 0, 0);
  EXPECT_EQ(t.primary, -1);
  EXPECT_FALSE(t.primary_conflict);
  EXPECT_TRUE(t.replicas.empty());
  EXPECT_FALSE(t.nodes[0].replay_lag_bytes.has_value());
  EXPECT_FALSE(t.nodes[0].replay_lag_seconds.has_value());
}

TEST(TopologyTest, IsUsableReplica) {
  const Topology t = BuildTopology(
      {Primary("pg1", 10'000), Replica("pg2", 10'000, 9'000, 0.2),
       Replica("pg3", 10'000, 10'000, 0, NodeHealth::kSuspect),
       Replica("pg4", 10'000, 10'000, 0, NodeHealth::kDown), Replica("pg5", 10'000, 0, 0)},
      1, 0);
  EXPECT_FALSE(t.IsUsableReplica(0, 0));  // the primary
  EXPECT_TRUE(t.IsUsableReplica(1, 0));
  EXPECT_TRUE(t.IsUsableReplica(1, 1000));
  EXPECT_FALSE(t.IsUsableReplica(1, 999));
  EXPECT_TRUE(t.IsUsableReplica(1, 0, milliseconds(200)));
  EXPECT_FALSE(t.IsUsableReplica(1, 0, milliseconds(199)));
  EXPECT_FALSE(t.IsUsableReplica(2, 0));  // suspect: no reads
  EXPECT_FALSE(t.IsUsableReplica(3, 0));  // down
  EXPECT_TRUE(t.IsUsableReplica(4, 0));   // lag unknown but no bound
  EXPECT_FALSE(t.IsUsableReplica(4, 1 << 20));
  EXPECT_FALSE(t.IsUsableReplica(99, 0));
}

TEST(TopologyTest, Names) {
  EXPECT_EQ(ToString(NodeHealth::kUp), "up");
  EXPECT_EQ(ToString(NodeHealth::kSuspect), "suspect");
  EXPECT_EQ(ToString(NodeHealth::kDown), "down");
  EXPECT_EQ(ToString(NodeHealth::kFenced), "fenced");
  EXPECT_EQ(ToString(NodeRole::kPrimary), "primary");
  EXPECT_EQ(ToString(NodeRole::kReplica), "replica");
  EXPECT_EQ(ToString(NodeRole::kUnknown), "unknown");
}

}  // namespace
}  // namespace pgrelay::health
