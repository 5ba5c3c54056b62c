#include "proxy/ring.h"

#include <gtest/gtest.h>

#include <deque>

namespace pgrelay::proxy {
namespace {

TEST(Ring, KeepsFifoOrderAcrossGrowthAndWrapAround) {
  Ring<int> ring;
  std::deque<int> model;
  int next = 0;
  // Pushes and pops in uneven bursts, so the head wraps around many times and the array grows
  // while the live elements straddle its end.
  for (int round = 0; round < 200; ++round) {
    const int pushes = round % 7 + 1;
    const int pops = round % 5;
    for (int i = 0; i < pushes; ++i) {
      ring.push_back(next);
      model.push_back(next++);
    }
    for (int i = 0; i < pops && !model.empty(); ++i) {
      ASSERT_EQ(ring.front(), model.front());
      ring.pop_front();
      model.pop_front();
    }
    ASSERT_EQ(ring.size(), model.size());
    for (size_t i = 0; i < model.size(); ++i) ASSERT_EQ(ring[i], model[i]) << "round " << round;
  }
  while (!model.empty()) {
    ASSERT_EQ(ring.front(), model.front());
    ring.pop_front();
    model.pop_front();
  }
  EXPECT_TRUE(ring.empty());
}

TEST(Ring, ElementsAreWritableInPlaceAndClearEmpties) {
  Ring<int> ring;
  for (int i = 0; i < 20; ++i) ring.push_back(i);
  ring[3] = 100;
  EXPECT_EQ(ring[3], 100);
  ring.clear();
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.size(), 0u);
  ring.push_back(7);
  EXPECT_EQ(ring.front(), 7);
}

}  // namespace
}  // namespace pgrelay::proxy
