#include "health/failover.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "health/cluster_state.h"
#include "health/hook.h"
#include "health/topology_builder.h"

namespace pgrelay::health {
namespace {

NodeStatus Node(const std::string& name, NodeRole role, NodeHealth state, uint32_t timeline,
                uint64_t lsn = 0) {
  NodeStatus n;
  n.name = name;
  n.host = "127.0.0.1";
  n.role = role;
  n.state = state;
  n.up = state == NodeHealth::kUp;
  n.timeline = timeline;
  if (role == NodeRole::kPrimary) {
    n.current_lsn = lsn;
  } else {
    n.receive_lsn = lsn;
    n.replay_lsn = lsn;
    n.wal_receiver_streaming = false;
  }
  return n;
}

// --- BuildTopology with a record ---

TEST(RecordedTopologyTest, OldPrimaryComingBackIsFenced) {
  // Recorded: b (index 1) at timeline 2. a still claims primary on timeline 1.
  std::vector<NodeStatus> nodes = {Node("a", NodeRole::kPrimary, NodeHealth::kUp, 1, 100),
                                   Node("b", NodeRole::kPrimary, NodeHealth::kUp, 2, 200),
                                   Node("c", NodeRole::kReplica, NodeHealth::kUp, 2, 200)};
  const RecordedPrimary recorded{1, 2};
  Topology t = BuildTopology(nodes, 1, 2, -1, &recorded);
  EXPECT_EQ(t.primary, 1);
  EXPECT_FALSE(t.primary_conflict);
  EXPECT_EQ(t.nodes[0].state, NodeHealth::kFenced);
  EXPECT_EQ(t.replicas, std::vector<int>{2});
}

TEST(RecordedTopologyTest, PromotionOutsidePgrelayOnANewerTimelineIsFollowed) {
  std::vector<NodeStatus> nodes = {Node("a", NodeRole::kPrimary, NodeHealth::kDown, 1, 100),
                                   Node("b", NodeRole::kPrimary, NodeHealth::kUp, 2, 200)};
  const RecordedPrimary recorded{0, 1};
  Topology t = BuildTopology(nodes, 1, 1, -1, &recorded);
  EXPECT_EQ(t.primary, 1);
}

TEST(RecordedTopologyTest, AClaimOnAnOlderTimelineIsNeverTheNewPrimary) {
  std::vector<NodeStatus> nodes = {Node("a", NodeRole::kPrimary, NodeHealth::kUp, 1, 100),
                                   Node("b", NodeRole::kPrimary, NodeHealth::kDown, 2, 200)};
  const RecordedPrimary recorded{1, 2};  // b recorded but down; a is the stale old primary
  Topology t = BuildTopology(nodes, 1, 2, -1, &recorded);
  EXPECT_EQ(t.primary, -1);
  EXPECT_EQ(t.nodes[0].state, NodeHealth::kFenced);
}

// --- PlanPromotion ---

config::Config Config() {
  config::Config c;
  for (const char* n : {"a", "b", "c"}) c.nodes.push_back({n, "127.0.0.1", 5432, 1});
  return c;
}

Topology FailedPrimary(uint64_t b_lsn, uint64_t c_lsn) {
  std::vector<NodeStatus> nodes = {Node("a", NodeRole::kPrimary, NodeHealth::kDown, 1, 500),
                                   Node("b", NodeRole::kReplica, NodeHealth::kUp, 1, b_lsn),
                                   Node("c", NodeRole::kReplica, NodeHealth::kUp, 1, c_lsn)};
  const RecordedPrimary recorded{0, 1};
  return BuildTopology(nodes, 1, 1, -1, &recorded);
}

TEST(PlanPromotionTest, PicksTheMostAdvancedReplica) {
  const config::Config c = Config();
  std::string why;
  auto plan = PlanPromotion(FailedPrimary(300, 400), 0, c, &why);
  ASSERT_TRUE(plan) << why;
  EXPECT_EQ(plan->candidate, 2);
  EXPECT_EQ(plan->failed, 0);
  plan = PlanPromotion(FailedPrimary(400, 400), 0, c, &why);  // tie: config order
  ASSERT_TRUE(plan);
  EXPECT_EQ(plan->candidate, 1);
}

TEST(PlanPromotionTest, NothingWhileThePrimaryIsNotDown) {
  const config::Config c = Config();
  Topology t = FailedPrimary(300, 400);
  t.nodes[0].state = NodeHealth::kSuspect;
  std::string why;
  EXPECT_FALSE(PlanPromotion(t, 0, c, &why));
  EXPECT_TRUE(why.empty());
}

TEST(PlanPromotionTest, ReplicasStillStreamingMeanANetworkProblem) {
  const config::Config c = Config();
  Topology t = FailedPrimary(300, 400);
  t.nodes[2].wal_receiver_streaming = true;
  std::string why;
  EXPECT_FALSE(PlanPromotion(t, 0, c, &why));
  EXPECT_NE(why.find("still streams"), std::string::npos) << why;
  t.nodes[2].wal_receiver_streaming.reset();  // cannot tell: no promotion either
  EXPECT_FALSE(PlanPromotion(t, 0, c, &why));
  EXPECT_NE(why.find("pg_monitor"), std::string::npos) << why;
}

TEST(PlanPromotionTest, MaxLagBytesRefusesACandidateTooFarBehind) {
  config::Config c = Config();
  c.failover.max_lag_bytes = 50;
  std::string why;
  EXPECT_FALSE(PlanPromotion(FailedPrimary(300, 400), 0, c, &why));  // 100 behind the last 500
  EXPECT_NE(why.find("max_lag_bytes"), std::string::npos);
  EXPECT_TRUE(PlanPromotion(FailedPrimary(300, 460), 0, c, &why));
}

// --- RewriteConninfo ---

TEST(RewriteConninfoTest, ReplacesHostAndPortKeepsTheRest) {
  const std::string out = RewriteConninfo(
      "user=postgres passfile='/var/lib/post gres/.pgpass' host=10.0.0.1 port=5432 "
      "hostaddr=10.0.0.1 application_name=s2 sslmode=prefer",
      "127.0.0.1", 6543);
  EXPECT_EQ(out,
            "user='postgres' passfile='/var/lib/post gres/.pgpass' application_name='s2' "
            "sslmode='prefer' host='127.0.0.1' port='6543'");
  EXPECT_EQ(RewriteConninfo("password='it\\'s' host = a", "b", 1),
            "password='it\\'s' host='b' port='1'");
}

// --- The state file ---

TEST(ClusterStateTest, RecordRoundTripsAndRejectsGarbage) {
  const ClusterRecord r{7, "pg2", 3};
  EXPECT_EQ(ParseRecord(FormatRecord(r)), r);
  EXPECT_FALSE(ParseRecord("epoch=1\nprimary=x\n"));
  EXPECT_FALSE(ParseRecord("epoch=one\nprimary=x\ntimeline=1\n"));
  EXPECT_FALSE(ParseRecord("bogus"));
}

TEST(ClusterStateTest, LocalStoreSurvivesAReopen) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("pgrelay-state-" + std::to_string(::getpid()));
  std::filesystem::remove(path);
  std::string error;
  std::optional<ClusterRecord> loaded;
  {
    LocalStateStore store(path.string());
    ASSERT_TRUE(store.Load(&loaded, &error)) << error;
    EXPECT_FALSE(loaded);
    ASSERT_TRUE(store.Store({2, "b", 2}, &error)) << error;
  }
  LocalStateStore again(path.string());
  ASSERT_TRUE(again.Load(&loaded, &error)) << error;
  EXPECT_EQ(loaded, (ClusterRecord{2, "b", 2}));
  std::FILE* f = std::fopen(path.c_str(), "w");
  std::fputs("garbage", f);
  std::fclose(f);
  EXPECT_FALSE(again.Load(&loaded, &error));
  EXPECT_NE(error.find("not a valid"), std::string::npos);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace pgrelay::health

// --- Hooks ---

namespace pgrelay::health {
namespace {

HookResult RunCommand(const std::string& command, std::chrono::milliseconds timeout) {
  boost::asio::io_context io;
  HookResult result;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        const boost::asio::any_io_executor ex = io.get_executor();
        result = co_await RunHook(ex, command, timeout);
      },
      boost::asio::detached);
  io.run();
  return result;
}

TEST(HookTest, PlaceholdersAreShellQuoted) {
  EXPECT_EQ(ExpandHook("fence {failed} on {failed_host}:{port} {unknown}",
                       {{"failed", "pg1"}, {"failed_host", "it's"}, {"port", "5432"}}),
            "fence 'pg1' on 'it'\\''s':'5432' {unknown}");
}

TEST(HookTest, CapturesOutputAndExitStatus) {
  HookResult r = RunCommand("echo out; echo err >&2; exit 3", std::chrono::seconds(5));
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.exit_status, 3);
  EXPECT_EQ(r.output, "out\nerr\n");
  r = RunCommand("true", std::chrono::seconds(5));
  EXPECT_TRUE(r.ok);
}

TEST(HookTest, TimeoutKillsTheWholeGroup) {
  const auto start = std::chrono::steady_clock::now();
  HookResult r = RunCommand("sleep 30 & sleep 30", std::chrono::milliseconds(300));
  EXPECT_TRUE(r.timed_out);
  EXPECT_FALSE(r.ok);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

}  // namespace
}  // namespace pgrelay::health
