// Server::WorkerCount: `workers` as configured, else one per core, or half the cores when every
// node is on this machine.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "config/config.h"
#include "proxy/server.h"

namespace pgrelay::proxy {
namespace {

config::Config WithHosts(std::initializer_list<const char*> hosts) {
  config::Config c;
  int i = 0;
  for (const char* host : hosts) {
    config::NodeConfig node;
    node.name = "pg" + std::to_string(++i);
    node.host = host;
    c.nodes.push_back(node);
  }
  return c;
}

int Cores() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

TEST(WorkerCountTest, LoopbackNodesShareTheMachine) {
  EXPECT_TRUE(Server::EveryNodeOnThisMachine(WithHosts({"127.0.0.1", "127.0.0.2", "::1"})));
  EXPECT_TRUE(Server::EveryNodeOnThisMachine(WithHosts({"localhost"})));
  EXPECT_FALSE(Server::EveryNodeOnThisMachine(WithHosts({"127.0.0.1", "10.0.0.7"})));
  EXPECT_FALSE(Server::EveryNodeOnThisMachine(WithHosts({"db1.example.com"})));
  EXPECT_FALSE(Server::EveryNodeOnThisMachine(WithHosts({})));
}

TEST(WorkerCountTest, RemovedSlotsDoNotCount) {
  config::Config c = WithHosts({"127.0.0.1", "10.0.0.7"});
  c.nodes[1].removed = true;
  EXPECT_TRUE(Server::EveryNodeOnThisMachine(c));
}

TEST(WorkerCountTest, AutoIsHalfTheCoresWhenCoLocatedElseOnePerCore) {
  EXPECT_EQ(Server::WorkerCount(WithHosts({"127.0.0.1", "127.0.0.1"})), std::max(1, Cores() / 2));
  EXPECT_EQ(Server::WorkerCount(WithHosts({"127.0.0.1", "192.168.1.20"})), Cores());
}

TEST(WorkerCountTest, ConfiguredCountWins) {
  config::Config c = WithHosts({"127.0.0.1"});
  c.workers = 3;
  EXPECT_EQ(Server::WorkerCount(c), 3);
}

}  // namespace
}  // namespace pgrelay::proxy
