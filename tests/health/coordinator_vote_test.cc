// MajorityReportsDown: the live members' views (as DescribeView publishes them) decide whether
// the coordinator may promote in place of a failed primary.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "health/coordinator.h"
#include "health/topology.h"

namespace pgrelay::health {
namespace {

// A member's view: pg1 (the primary) in state `pg1_state`, pg2 and pg3 replicas that are up.
std::string View(NodeHealth pg1_state, uint64_t epoch = 1, bool pg1_answered = false) {
  Topology t;
  t.epoch = epoch;
  for (const char* name : {"pg1", "pg2", "pg3"}) {
    NodeStatus n;
    n.name = name;
    n.state = NodeHealth::kUp;
    n.up = true;
    n.role = NodeRole::kReplica;
    t.nodes.push_back(n);
  }
  t.nodes[0].role = NodeRole::kPrimary;
  t.nodes[0].state = pg1_state;
  t.nodes[0].up = pg1_state == NodeHealth::kUp || pg1_answered;
  if (pg1_state == NodeHealth::kUp) t.primary = 0;
  return DescribeView(t);
}

TEST(MajorityReportsDownTest, AllMembersSeeThePrimaryDown) {
  const std::map<std::string, std::string> views = {{"a", View(NodeHealth::kDown)},
                                                    {"b", View(NodeHealth::kDown)},
                                                    {"c", View(NodeHealth::kDown)}};
  std::string why;
  EXPECT_TRUE(MajorityReportsDown(views, "pg1", 1, &why)) << why;
}

TEST(MajorityReportsDownTest, TwoOfThreeIsAMajoritySuspectCounts) {
  // A member whose probes just started failing (suspect) reports the node unreachable too.
  const std::map<std::string, std::string> views = {{"a", View(NodeHealth::kDown)},
                                                    {"b", View(NodeHealth::kSuspect)},
                                                    {"c", View(NodeHealth::kUp)}};
  std::string why;
  EXPECT_TRUE(MajorityReportsDown(views, "pg1", 1, &why)) << why;
}

TEST(MajorityReportsDownTest, OnlyTheCoordinatorCutOffIsNoMajority) {
  const std::map<std::string, std::string> views = {
      {"a", View(NodeHealth::kDown)}, {"b", View(NodeHealth::kUp)}, {"c", View(NodeHealth::kUp)}};
  std::string why;
  EXPECT_FALSE(MajorityReportsDown(views, "pg1", 1, &why));
  EXPECT_NE(why.find("only 1 of 3"), std::string::npos) << why;
  EXPECT_NE(why.find("b, c"), std::string::npos) << why;
}

TEST(MajorityReportsDownTest, HalfIsNotAMajority) {
  const std::map<std::string, std::string> views = {{"a", View(NodeHealth::kDown)},
                                                    {"b", View(NodeHealth::kUp)}};
  std::string why;
  EXPECT_FALSE(MajorityReportsDown(views, "pg1", 1, &why));
  EXPECT_NE(why.find("only 1 of 2"), std::string::npos) << why;
}

TEST(MajorityReportsDownTest, ASingleMemberDecidesAlone) {
  std::string why;
  EXPECT_TRUE(MajorityReportsDown({{"a", View(NodeHealth::kDown)}}, "pg1", 1, &why)) << why;
  EXPECT_FALSE(MajorityReportsDown({}, "pg1", 1, &why));
}

TEST(MajorityReportsDownTest, AFailedLastProbeCountsAsUnreachable) {
  // A view whose last probe of pg1 failed counts, whatever its (hysteresis) state says.
  std::string why;
  Topology t;
  t.epoch = 1;
  NodeStatus pg1;
  pg1.name = "pg1";
  pg1.state = NodeHealth::kUp;
  pg1.up = false;
  t.nodes.push_back(pg1);
  EXPECT_TRUE(MajorityReportsDown({{"a", DescribeView(t)}}, "pg1", 1, &why)) << why;
}

TEST(MajorityReportsDownTest, UnreadableViewsCountAgainst) {
  const std::map<std::string, std::string> views = {
      {"a", View(NodeHealth::kDown)}, {"b", "not json"}, {"c", R"({"epoch":1,"nodes":{}})"}};
  std::string why;
  EXPECT_FALSE(MajorityReportsDown(views, "pg1", 1, &why));
  EXPECT_NE(why.find("b (no readable view of pg1)"), std::string::npos) << why;
  EXPECT_NE(why.find("c (no readable view of pg1)"), std::string::npos) << why;
}

TEST(MajorityReportsDownTest, AMemberOnANewerEpochStopsThePromotion) {
  // Another member already follows epoch 2: this coordinator's epoch-1 view of "the primary"
  // is outdated, whatever the others say.
  const std::map<std::string, std::string> views = {{"a", View(NodeHealth::kDown, 1)},
                                                    {"b", View(NodeHealth::kDown, 1)},
                                                    {"c", View(NodeHealth::kDown, 2)}};
  std::string why;
  EXPECT_FALSE(MajorityReportsDown(views, "pg1", 1, &why));
  EXPECT_NE(why.find("member c has seen epoch 2"), std::string::npos) << why;
  EXPECT_TRUE(MajorityReportsDown(views, "pg1", 2, &why)) << why;
}

}  // namespace
}  // namespace pgrelay::health
