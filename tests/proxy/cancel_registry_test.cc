#include "proxy/cancel_registry.h"

#include <gtest/gtest.h>

namespace pgrelay::proxy {
namespace {

TEST(CancelRegistry, FindsTheSessionsCurrentBackendOnlyWithTheRightKey) {
  CancelRegistry registry;
  CancelRegistry::Registration a = registry.Register();
  CancelRegistry::Registration b = registry.Register();
  EXPECT_NE(a.pid, b.pid);
  // Nothing chosen yet: no target.
  EXPECT_FALSE(registry.Find(a.pid, a.key).has_value());

  a.slot->SetTarget(0, CancelTarget{"127.0.0.1", 5432, 1001, 11});
  a.slot->SetTarget(2, CancelTarget{"127.0.0.2", 5433, 2002, 22});
  a.slot->SetCurrent(0);
  auto t = registry.Find(a.pid, a.key);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->backend_pid, 1001);
  EXPECT_EQ(t->port, 5432);

  // The session moved to node 2: a cancel goes there.
  a.slot->SetCurrent(2);
  t = registry.Find(a.pid, a.key);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->host, "127.0.0.2");
  EXPECT_EQ(t->backend_pid, 2002);
  EXPECT_EQ(t->backend_key, 22);

  // A reopened connection to node 2 replaces its target.
  a.slot->SetTarget(2, CancelTarget{"127.0.0.2", 5433, 3003, 33});
  EXPECT_EQ(registry.Find(a.pid, a.key)->backend_pid, 3003);

  EXPECT_FALSE(registry.Find(a.pid, a.key ^ 1).has_value()) << "wrong key";
  EXPECT_FALSE(registry.Find(b.pid, b.key).has_value()) << "other session has no target";
  registry.Unregister(a.pid);
  EXPECT_FALSE(registry.Find(a.pid, a.key).has_value()) << "session gone";
}

}  // namespace
}  // namespace pgrelay::proxy
