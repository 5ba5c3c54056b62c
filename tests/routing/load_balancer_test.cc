#include "routing/load_balancer.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

namespace pgrelay::routing {
namespace {

std::map<int, int> Count(LoadBalancer& lb, const std::vector<Candidate>& c, int picks) {
  std::map<int, int> n;
  for (int i = 0; i < picks; ++i) ++n[lb.Pick(c)];
  return n;
}

TEST(LoadBalancerTest, EmptyGivesMinusOne) {
  LoadBalancer lb(LoadBalancePolicy::kRoundRobin);
  EXPECT_EQ(lb.Pick({}), -1);
}

TEST(LoadBalancerTest, RoundRobinFollowsWeightsExactly) {
  LoadBalancer lb(LoadBalancePolicy::kRoundRobin);
  std::vector<Candidate> c = {{1, 1, 0}, {2, 3, 0}};
  auto n = Count(lb, c, 400);
  EXPECT_EQ(n[1], 100);
  EXPECT_EQ(n[2], 300);
}

TEST(LoadBalancerTest, RoundRobinAlternatesWithEqualWeights) {
  LoadBalancer lb(LoadBalancePolicy::kRoundRobin);
  std::vector<Candidate> c = {{1, 1, 0}, {2, 1, 0}};
  int a = lb.Pick(c), b = lb.Pick(c), a2 = lb.Pick(c);
  EXPECT_NE(a, b);
  EXPECT_EQ(a, a2);
}

TEST(LoadBalancerTest, RandomFollowsWeightsApproximately) {
  LoadBalancer lb(LoadBalancePolicy::kRandom, 1234);
  std::vector<Candidate> c = {{1, 1, 0}, {2, 2, 0}, {5, 1, 0}};
  auto n = Count(lb, c, 40000);
  EXPECT_NEAR(n[1], 10000, 600);
  EXPECT_NEAR(n[2], 20000, 800);
  EXPECT_NEAR(n[5], 10000, 600);
}

TEST(LoadBalancerTest, LeastConnectionsPicksLeastLoadedPerWeight) {
  LoadBalancer lb(LoadBalancePolicy::kLeastConnections, 1);
  EXPECT_EQ(lb.Pick(std::vector<Candidate>{{1, 1, 5}, {2, 1, 2}, {3, 1, 9}}), 2);
  EXPECT_EQ(lb.Pick(std::vector<Candidate>{{1, 4, 4}, {2, 1, 2}}), 1);  // 1.0 vs 2.0
  auto n = Count(lb, {{1, 1, 0}, {2, 1, 0}}, 1000);
  EXPECT_GT(n[1], 400);
  EXPECT_GT(n[2], 400);
}

}  // namespace
}  // namespace pgrelay::routing
