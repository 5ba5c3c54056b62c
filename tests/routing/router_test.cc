#include "routing/router.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

namespace pgrelay::routing {
namespace {

using health::NodeHealth;
using health::NodeRole;
using health::NodeStatus;
using health::Topology;

// A primary (node 0) at LSN 1000 and two up replicas with the given replay LSNs.
Topology Cluster(uint64_t replay1, uint64_t replay2) {
  Topology t;
  t.primary = 0;
  for (int i = 0; i < 3; ++i) {
    NodeStatus n;
    n.name = "n" + std::to_string(i);
    n.state = NodeHealth::kUp;
    n.up = true;
    n.role = i == 0 ? NodeRole::kPrimary : NodeRole::kReplica;
    n.current_lsn = i == 0 ? 1000 : 0;
    n.replay_lsn = i == 1 ? replay1 : i == 2 ? replay2 : 0;
    n.replay_lag_bytes = i == 0 ? 0 : 1000 - n.replay_lsn;
    t.nodes.push_back(n);
    if (i > 0) t.replicas.push_back(i);
  }
  return t;
}

config::Config Config() {
  config::Config c;
  for (int i = 0; i < 3; ++i) c.nodes.push_back({"n" + std::to_string(i), "127.0.0.1", 5432, 1});
  c.routing.max_lag_bytes = 0;
  return c;
}

const SessionRouting kFollower{config::Strategy::kFollower, false, false};
const SessionRouting kLeader{config::Strategy::kLeader, false, false};
const std::vector<uint32_t> kIdle(3, 0);

UnitTraits Read() { return {}; }
UnitTraits Write() {
  UnitTraits t;
  t.write = true;
  return t;
}

TEST(RouterTest, LeaderSendsReadsToThePrimary) {
  const config::Config c = Config();
  Router r(c);
  RouteResult res = r.Route(Read(), kLeader, Cluster(1000, 1000), kIdle);
  EXPECT_EQ(res.node, 0);
  EXPECT_TRUE(res.to_primary);
  EXPECT_FALSE(res.fell_back);
}

TEST(RouterTest, FollowerSpreadsReadsAndSendsWritesToThePrimary) {
  const config::Config c = Config();
  Router r(c);
  const Topology t = Cluster(1000, 1000);
  std::set<int> seen;
  for (int i = 0; i < 4; ++i) seen.insert(r.Route(Read(), kFollower, t, kIdle).node);
  EXPECT_EQ(seen, (std::set<int>{1, 2}));
  EXPECT_EQ(r.Route(Write(), kFollower, t, kIdle).node, 0);
}

TEST(RouterTest, SessionAffinityKeepsASessionOnItsReplicaWhileItIsEligible) {
  config::Config c = Config();
  c.routing.replica_affinity = config::ReplicaAffinity::kSession;
  c.routing.max_lag_bytes = 100;
  Router r(c);
  const Topology t = Cluster(1000, 1000);
  // A session without a preference is balanced; then it keeps the replica it got.
  SessionRouting session = kFollower;
  session.preferred_replica = r.Route(Read(), session, t, kIdle).node;
  ASSERT_TRUE(session.preferred_replica == 1 || session.preferred_replica == 2);
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(r.Route(Read(), session, t, kIdle).node, session.preferred_replica);
  // The next new session gets the other replica (round robin among sessions).
  const int other = r.Route(Read(), kFollower, t, kIdle).node;
  EXPECT_NE(other, session.preferred_replica);
  // Its replica falls behind the lag bound: the session's reads move to the other one.
  const Topology behind = session.preferred_replica == 1 ? Cluster(500, 1000) : Cluster(1000, 500);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(r.Route(Read(), session, behind, kIdle).node, other);
  // Writes still go to the primary.
  EXPECT_EQ(r.Route(Write(), session, t, kIdle).node, 0);
}

TEST(RouterTest, NoAffinityIgnoresThePreference) {
  const config::Config c = Config();  // replica_affinity none (the default)
  Router r(c);
  const Topology t = Cluster(1000, 1000);
  SessionRouting session = kFollower;
  session.preferred_replica = 1;
  std::set<int> seen;
  for (int i = 0; i < 4; ++i) seen.insert(r.Route(Read(), session, t, kIdle).node);
  EXPECT_EQ(seen, (std::set<int>{1, 2}));
}

TEST(RouterTest, LagBoundExcludesAReplica) {
  config::Config c = Config();
  c.routing.max_lag_bytes = 100;
  Router r(c);
  const Topology t = Cluster(1000, 500);  // n2 is 500 bytes behind
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r.Route(Read(), kFollower, t, kIdle).node, 1);
}

TEST(RouterTest, LsnBoundKeepsReadsOffReplicasThatHaveNotReplayedIt) {
  const config::Config c = Config();
  Router r(c);
  const Topology t = Cluster(900, 700);
  LsnBound bound{800, {}};
  for (int i = 0; i < 4; ++i) {
    RouteResult res = r.Route(Read(), kFollower, t, kIdle, &bound);
    EXPECT_EQ(res.node, 1);
    EXPECT_FALSE(res.fell_back);
  }
  bound.min_lsn = 950;  // nobody has it: the primary, and `behind` says waiting may help
  RouteResult res = r.Route(Read(), kFollower, t, kIdle, &bound);
  EXPECT_EQ(res.node, 0);
  EXPECT_TRUE(res.fell_back);
  EXPECT_TRUE(res.behind);
}

TEST(RouterTest, LsnBoundUsesTheFresherReplayView) {
  const config::Config c = Config();
  Router r(c);
  const Topology t = Cluster(700, 700);  // the snapshot is old
  const std::vector<uint64_t> fresh = {0, 700, 990};
  LsnBound bound{950, fresh};
  EXPECT_EQ(r.Route(Read(), kFollower, t, kIdle, &bound).node, 2);
}

TEST(RouterTest, NoReplicaAtAllIsNotBehind) {
  const config::Config c = Config();
  Router r(c);
  Topology t = Cluster(1000, 1000);
  t.replicas.clear();
  LsnBound bound{10, {}};
  RouteResult res = r.Route(Read(), kFollower, t, kIdle, &bound);
  EXPECT_EQ(res.node, 0);
  EXPECT_TRUE(res.fell_back);
  EXPECT_FALSE(res.behind);
}

TEST(RouterTest, FallbackOffGivesAnError) {
  config::Config c = Config();
  c.routing.fallback_to_primary = false;
  Router r(c);
  LsnBound bound{2000, {}};
  RouteResult res = r.Route(Read(), kFollower, Cluster(1000, 1000), kIdle, &bound);
  EXPECT_EQ(res.node, -1);
  ASSERT_NE(res.error, nullptr);
}

}  // namespace
}  // namespace pgrelay::routing
