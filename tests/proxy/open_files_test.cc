// proxy/open_files.h: what the configuration needs, and raising the soft limit in this process
// (restored after each test; the hard limit is never touched).
#include "proxy/open_files.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <string>

namespace pgrelay::proxy {
namespace {

config::Config ThreeNodes(int max_clients) {
  config::Config c;
  for (int i = 0; i < 3; ++i) {
    config::NodeConfig n;
    n.name = "pg" + std::to_string(i + 1);
    c.nodes.push_back(n);
  }
  c.limits.max_client_connections = max_clients;
  return c;
}

TEST(OpenFilesNeeded, EveryClientWithAConnectionToEveryNodePlusAMargin) {
  EXPECT_EQ(OpenFilesNeeded(ThreeNodes(1000), 2), 1000u * 4 + 256);
  EXPECT_EQ(OpenFilesNeeded(ThreeNodes(10), 1), 10u * 4 + 256);
}

TEST(OpenFilesNeeded, ParkedPoolConnectionsCountPerWorkerAndNode) {
  config::Config c = ThreeNodes(100);
  c.pool.mode = config::PoolMode::kSession;
  c.pool.max_idle = 50;
  EXPECT_EQ(OpenFilesNeeded(c, 2), 100u * 4 + 50u * 2 * 3 + 256);
}

class OpenFileLimitTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &saved_), 0); }
  void TearDown() override { setrlimit(RLIMIT_NOFILE, &saved_); }
  void SetSoft(rlim_t soft) {
    rlimit l = saved_;
    l.rlim_cur = soft;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &l), 0);
  }
  static rlim_t Soft() {
    rlimit l{};
    getrlimit(RLIMIT_NOFILE, &l);
    return l.rlim_cur;
  }
  rlimit saved_{};
};

TEST_F(OpenFileLimitTest, RaisesTheSoftLimitToWhatIsNeeded) {
  const rlim_t hard = saved_.rlim_max == RLIM_INFINITY ? 1 << 20 : saved_.rlim_max;
  SetSoft(hard / 4);
  std::string error;
  const OpenFileLimit l = RaiseOpenFileLimit(hard / 2, &error);
  EXPECT_EQ(error, "");
  EXPECT_EQ(l.soft_before, hard / 4);
  EXPECT_EQ(l.soft, hard / 2);
  EXPECT_TRUE(l.raised());
  EXPECT_EQ(Soft(), hard / 2);
}

TEST_F(OpenFileLimitTest, StopsAtTheHardLimit) {
  const rlim_t hard = saved_.rlim_max == RLIM_INFINITY ? 1 << 20 : saved_.rlim_max;
  SetSoft(hard / 4);
  std::string error;
  const OpenFileLimit l = RaiseOpenFileLimit(hard + 1000, &error);
  EXPECT_EQ(error, "");
  // Without a hard limit the soft one goes exactly as far as needed.
  const rlim_t expected = saved_.rlim_max == RLIM_INFINITY ? hard + 1000 : saved_.rlim_max;
  EXPECT_EQ(l.soft, expected);
  EXPECT_EQ(l.hard, saved_.rlim_max);
  EXPECT_EQ(Soft(), expected);
}

TEST_F(OpenFileLimitTest, NeverLowersIt) {
  const rlim_t hard = saved_.rlim_max == RLIM_INFINITY ? 1 << 20 : saved_.rlim_max;
  SetSoft(hard / 2);
  std::string error;
  const OpenFileLimit l = RaiseOpenFileLimit(hard / 4, &error);
  EXPECT_FALSE(l.raised());
  EXPECT_EQ(l.soft, hard / 2);
  EXPECT_EQ(Soft(), hard / 2);
}

}  // namespace
}  // namespace pgrelay::proxy
