#include "health/sync_standby.h"

#include <gtest/gtest.h>

namespace pgrelay::health {
namespace {

TEST(SyncStandbyTest, AnyQuorum) {
  auto s = ParseSynchronousStandbyNames("ANY 1 (replica1, replica2)");
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->any);
  EXPECT_EQ(s->k, 1);
  EXPECT_EQ(s->names, (std::vector<std::string>{"replica1", "replica2"}));
  EXPECT_EQ(s->ReadQuorum(), 2);
}

TEST(SyncStandbyTest, FirstAndBareForms) {
  auto s = ParseSynchronousStandbyNames("first 2 (a, \"B c\", d)");
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->any);
  EXPECT_EQ(s->k, 2);
  EXPECT_EQ(s->names, (std::vector<std::string>{"a", "B c", "d"}));
  EXPECT_EQ(s->ReadQuorum(), 2);

  s = ParseSynchronousStandbyNames("2 (x, y)");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->k, 2);
  EXPECT_EQ(s->ReadQuorum(), 1);

  s = ParseSynchronousStandbyNames(" S1 , s2 ");
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->any);
  EXPECT_EQ(s->k, 1);
  EXPECT_EQ(s->names, (std::vector<std::string>{"s1", "s2"}));
}

TEST(SyncStandbyTest, NoQuorumPossible) {
  for (const char* text : {"", "   ", "*", "ANY 1 (*)", "ANY 3 (a, b)", "ANY (a)", "ANY 1 (a",
                           "ANY 0 (a)", "a b", "ANY 1 (a) junk"}) {
    EXPECT_FALSE(ParseSynchronousStandbyNames(text)) << text;
  }
}

TEST(SyncStandbyTest, NamesMatchCaseInsensitively) {
  EXPECT_TRUE(StandbyNameMatches("Replica1", "replica1"));
  EXPECT_FALSE(StandbyNameMatches("replica1", "replica10"));
}

}  // namespace
}  // namespace pgrelay::health
