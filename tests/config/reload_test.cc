#include "config/reload.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "config/config_loader.h"

namespace pgrelay::config {
namespace {

std::shared_ptr<const Config> Load(const std::string& yaml) {
  LoadResult r = LoadConfigString(yaml);
  EXPECT_TRUE(r.errors.empty()) << (r.errors.empty() ? "" : r.errors[0].ToString());
  return r.config;
}

std::string Nodes(const std::string& list) {
  return "nodes:\n" + list + "users:\n  - {name: app, password: secret}\n";
}

bool Contains(const std::vector<std::string>& lines, const std::string& part) {
  return std::any_of(lines.begin(), lines.end(),
                     [&](const std::string& l) { return l.find(part) != std::string::npos; });
}

const std::string kTwo =
    "  - {name: pg1, host: 127.0.0.1, port: 5432}\n"
    "  - {name: pg2, host: 127.0.0.1, port: 5433}\n";

TEST(PlanReload, SameFileChangesNothing) {
  auto running = Load(Nodes(kTwo));
  ReloadPlan plan = PlanReload(*running, *Load(Nodes(kTwo)), "pg1");
  ASSERT_TRUE(plan.errors.empty());
  ASSERT_NE(plan.config, nullptr);
  EXPECT_TRUE(plan.changes.empty());
  EXPECT_TRUE(plan.restart_needed.empty());
  EXPECT_FALSE(plan.nodes_changed);
  EXPECT_FALSE(plan.users_changed);
  EXPECT_EQ(plan.config->nodes, running->nodes);
}

TEST(PlanReload, StrategyChangeIsReported) {
  auto running = Load(Nodes(kTwo) + "routing: {strategy: leader}\n");
  ReloadPlan plan =
      PlanReload(*running, *Load(Nodes(kTwo) + "routing: {strategy: follower}\n"), "pg1");
  ASSERT_NE(plan.config, nullptr);
  EXPECT_EQ(plan.config->strategy, Strategy::kFollower);
  EXPECT_TRUE(Contains(plan.changes, "routing.strategy leader -> follower")) << plan.changes[0];
}

TEST(PlanReload, AddedNodeTakesANewSlotAtTheEnd) {
  auto running = Load(Nodes(kTwo));
  ReloadPlan plan = PlanReload(
      *running, *Load(Nodes("  - {name: pg3, host: 127.0.0.1, port: 5434}\n" + kTwo)), "pg1");
  ASSERT_NE(plan.config, nullptr);
  ASSERT_EQ(plan.config->nodes.size(), 3u);
  // Existing nodes keep their indexes even though the file lists pg3 first.
  EXPECT_EQ(plan.config->nodes[0].name, "pg1");
  EXPECT_EQ(plan.config->nodes[1].name, "pg2");
  EXPECT_EQ(plan.config->nodes[2].name, "pg3");
  EXPECT_TRUE(plan.nodes_changed);
  EXPECT_TRUE(Contains(plan.changes, "node pg3 (127.0.0.1:5434) added"));
}

TEST(PlanReload, RemovedNodeKeepsItsSlotAndComesBackToIt) {
  auto running = Load(Nodes(kTwo));
  ReloadPlan removed =
      PlanReload(*running, *Load(Nodes("  - {name: pg1, host: 127.0.0.1, port: 5432}\n")), "pg1");
  ASSERT_NE(removed.config, nullptr);
  ASSERT_EQ(removed.config->nodes.size(), 2u);
  EXPECT_TRUE(removed.config->nodes[1].removed);
  EXPECT_EQ(removed.config->FindNode("pg2"), -1);
  EXPECT_TRUE(Contains(removed.changes, "node pg2 (127.0.0.1:5433) removed"));

  ReloadPlan back = PlanReload(*removed.config, *Load(Nodes(kTwo)), "pg1");
  ASSERT_NE(back.config, nullptr);
  ASSERT_EQ(back.config->nodes.size(), 2u);
  EXPECT_FALSE(back.config->nodes[1].removed);
  EXPECT_EQ(back.config->FindNode("pg2"), 1);
  EXPECT_TRUE(Contains(back.changes, "node pg2 (127.0.0.1:5433) added back"));
}

TEST(PlanReload, MovedNodeIsANewSlot) {
  auto running = Load(Nodes(kTwo));
  ReloadPlan plan = PlanReload(*running,
                               *Load(Nodes("  - {name: pg1, host: 127.0.0.1, port: 5432}\n"
                                           "  - {name: pg2, host: 127.0.0.1, port: 6000}\n")),
                               "pg1");
  ASSERT_NE(plan.config, nullptr);
  ASSERT_EQ(plan.config->nodes.size(), 3u);
  EXPECT_TRUE(plan.config->nodes[1].removed);
  EXPECT_EQ(plan.config->nodes[2].port, 6000);
  EXPECT_EQ(plan.config->FindNode("pg2"), 2);
}

TEST(PlanReload, WeightChangeStaysInPlace) {
  auto running = Load(Nodes(kTwo));
  ReloadPlan plan =
      PlanReload(*running,
                 *Load(Nodes("  - {name: pg1, host: 127.0.0.1, port: 5432}\n"
                             "  - {name: pg2, host: 127.0.0.1, port: 5433, weight: 3}\n")),
                 "pg1");
  ASSERT_NE(plan.config, nullptr);
  ASSERT_EQ(plan.config->nodes.size(), 2u);
  EXPECT_EQ(plan.config->nodes[1].weight, 3);
  EXPECT_TRUE(Contains(plan.changes, "node pg2 weight 1 -> 3"));
}

TEST(PlanReload, ThePrimaryCannotBeRemoved) {
  auto running = Load(Nodes(kTwo));
  ReloadPlan plan =
      PlanReload(*running, *Load(Nodes("  - {name: pg2, host: 127.0.0.1, port: 5433}\n")), "pg1");
  EXPECT_EQ(plan.config, nullptr);
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_NE(plan.errors[0].find("pg1 (127.0.0.1:5432) is the primary"), std::string::npos);
  EXPECT_NE(plan.errors[0].find("switchover"), std::string::npos);
}

TEST(PlanReload, StartupOnlyKeysKeepTheirRunningValues) {
  auto running = Load(Nodes(kTwo) + "listen: 127.0.0.1:6432\nworkers: 2\n");
  ReloadPlan plan =
      PlanReload(*running, *Load(Nodes(kTwo) + "listen: 127.0.0.1:7000\nworkers: 4\n"), "pg1");
  ASSERT_NE(plan.config, nullptr);
  EXPECT_EQ(plan.config->listen.port, 6432);
  EXPECT_EQ(plan.config->workers, 2);
  EXPECT_EQ(plan.restart_needed, (std::vector<std::string>{"listen", "workers"}));
}

TEST(PlanReload, CoordinationIsStartupOnly) {
  auto running =
      Load(Nodes(kTwo) + "coordination: {member: a, etcd: {endpoints: [127.0.0.1:2379]}}\n");
  ReloadPlan plan = PlanReload(
      *running,
      *Load(Nodes(kTwo) + "coordination: {member: b, etcd: {endpoints: [127.0.0.1:2380]}}\n"),
      "pg1");
  ASSERT_NE(plan.config, nullptr);
  EXPECT_EQ(plan.config->coordination.member, "a");
  EXPECT_EQ(plan.config->coordination.etcd->endpoints.front().port, 2379);
  EXPECT_EQ(plan.restart_needed, (std::vector<std::string>{"coordination"}));
}

TEST(PlanReload, UsersAndTokenChangesAreNamedWithoutSecrets) {
  auto running = Load(Nodes(kTwo) + "admin: {token: first-token}\n");
  const std::string next_yaml =
      "nodes:\n" + kTwo +
      "users:\n  - {name: app, password: other-secret}\nadmin: {token: second-token}\n";
  ReloadPlan plan = PlanReload(*running, *Load(next_yaml), "pg1");
  ASSERT_NE(plan.config, nullptr);
  EXPECT_TRUE(plan.users_changed);
  EXPECT_TRUE(Contains(plan.changes, "admin.token changed"));
  for (const std::string& line : plan.changes) {
    EXPECT_EQ(line.find("secret"), std::string::npos) << line;
    EXPECT_EQ(line.find("token:"), std::string::npos) << line;
    EXPECT_EQ(line.find("second-token"), std::string::npos) << line;
  }
}

TEST(PlanReload, SlotsRunOut) {
  std::string many;
  for (size_t i = 0; i < kMaxNodes; ++i) {
    many += "  - {name: n" + std::to_string(i) +
            ", host: 127.0.0.1, port: " + std::to_string(10000 + i) + "}\n";
  }
  auto running = Load(Nodes(many));
  // Move every node but n0 to another port: each needs a new slot; there are none left.
  std::string moved = "  - {name: n0, host: 127.0.0.1, port: 10000}\n";
  moved += "  - {name: n1, host: 127.0.0.1, port: 20001}\n";
  ReloadPlan plan = PlanReload(*running, *Load(Nodes(moved)), "n0");
  EXPECT_EQ(plan.config, nullptr);
  ASSERT_FALSE(plan.errors.empty());
  EXPECT_NE(plan.errors[0].find("restart pgrelay"), std::string::npos) << plan.errors[0];
}

TEST(PlanReload, LoaderRefusesMoreNodesThanSlots) {
  std::string many;
  for (size_t i = 0; i <= kMaxNodes; ++i) {
    many += "  - {name: n" + std::to_string(i) +
            ", host: 127.0.0.1, port: " + std::to_string(10000 + i) + "}\n";
  }
  LoadResult r = LoadConfigString(Nodes(many));
  ASSERT_FALSE(r.errors.empty());
  EXPECT_NE(r.errors[0].message.find("at most 64"), std::string::npos) << r.errors[0].message;
}

}  // namespace
}  // namespace pgrelay::config
