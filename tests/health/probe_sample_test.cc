// Unit tests for the probe row parser and LSN parsing/formatting.
#include "health/probe_sample.h"

#include <gtest/gtest.h>

#include <string>

namespace pgrelay::health {
namespace {

TEST(ParseLsnTest, ParsesAndFormats) {
  EXPECT_EQ(ParseLsn("0/0"), 0u);
  EXPECT_EQ(ParseLsn("0/51EF140"), 0x51EF140u);
  EXPECT_EQ(ParseLsn("16/B374D848"), 0x16B374D848u);
  EXPECT_EQ(ParseLsn("ffffffff/ffffffff"), ~uint64_t{0});
  EXPECT_EQ(FormatLsn(0x16B374D848u), "16/B374D848");
  EXPECT_EQ(FormatLsn(0), "0/0");
  for (const char* text : {"0/51EF140", "16/B374D848", "FFFFFFFF/FFFFFFFF", "1/0"}) {
    EXPECT_EQ(FormatLsn(*ParseLsn(text)), text);
  }
}

TEST(ParseLsnTest, RejectsMalformed) {
  for (const char* text : {"", "/", "0/", "/0", "12345", "0/G", "1/2/3", "100000000/0", "-1/0",
                           " 0/1", "0/1 ", "0x1/2"}) {
    EXPECT_FALSE(ParseLsn(text).has_value()) << text;
  }
}

ResultRow Row(std::initializer_list<const char*> values) {
  ResultRow row;
  for (const char* v : values) {
    row.push_back(v ? std::optional<std::string>(v) : std::nullopt);
  }
  return row;
}

TEST(ParseProbeRowTest, Primary) {
  std::string error;
  const auto s =
      ParseProbeRow(Row({"f", "0/51EF228", nullptr, nullptr, nullptr, nullptr, "3", "f", "ANY 1 (a, b)", "remote_apply", nullptr}), &error);
  ASSERT_TRUE(s) << error;
  EXPECT_FALSE(s->in_recovery);
  EXPECT_EQ(s->current_lsn, 0x51EF228u);
  EXPECT_EQ(s->receive_lsn, 0u);
  EXPECT_EQ(s->replay_lsn, 0u);
  EXPECT_FALSE(s->replay_lag_seconds);
  EXPECT_EQ(s->timeline, 3u);
  EXPECT_FALSE(s->replay_paused);
  EXPECT_FALSE(s->WalReceiverStreaming().has_value());
  EXPECT_EQ(s->synchronous_standby_names, "ANY 1 (a, b)");
  EXPECT_EQ(s->synchronous_commit, "remote_apply");
}

TEST(ParseProbeRowTest, StreamingReplica) {
  std::string error;
  const auto s = ParseProbeRow(
      Row({"t", nullptr, "0/6000000", "0/5000000", "12.345678", "streaming", "1", "t", "", "on", nullptr}), &error);
  ASSERT_TRUE(s) << error;
  EXPECT_TRUE(s->in_recovery);
  EXPECT_EQ(s->current_lsn, 0u);
  EXPECT_EQ(s->receive_lsn, 0x6000000u);
  EXPECT_EQ(s->replay_lsn, 0x5000000u);
  ASSERT_TRUE(s->replay_lag_seconds);
  EXPECT_DOUBLE_EQ(*s->replay_lag_seconds, 12.345678);
  EXPECT_TRUE(s->replay_paused);
  EXPECT_EQ(s->WalReceiverStreaming(), std::optional<bool>(true));
}

TEST(ParseProbeRowTest, WalReceiverStates) {
  std::string error;
  auto s = ParseProbeRow(Row({"t", nullptr, "0/1", "0/1", "0", nullptr, "1", "f", "", "on", nullptr}), &error);
  ASSERT_TRUE(s) << error;
  EXPECT_EQ(s->WalReceiverStreaming(), std::optional<bool>(false));  // no receiver at all
  EXPECT_EQ(*s->replay_lag_seconds, 0.0);
  s = ParseProbeRow(Row({"t", nullptr, "0/1", "0/1", "0", "?", "1", "f", "", "on", nullptr}), &error);
  ASSERT_TRUE(s) << error;
  EXPECT_FALSE(s->WalReceiverStreaming().has_value());  // hidden from a role without pg_monitor
  s = ParseProbeRow(Row({"t", nullptr, "0/1", "0/1", "0", "waiting", "1", "f", "", "on", nullptr}), &error);
  ASSERT_TRUE(s) << error;
  EXPECT_EQ(s->WalReceiverStreaming(), std::optional<bool>(false));
}

TEST(ParseProbeRowTest, NegativeLagFromClockSkewIsZero) {
  std::string error;
  const auto s =
      ParseProbeRow(Row({"t", nullptr, "0/2", "0/1", "-0.002", "streaming", "1", "f", "", "on", nullptr}), &error);
  ASSERT_TRUE(s) << error;
  EXPECT_EQ(*s->replay_lag_seconds, 0.0);
}

TEST(ParseProbeRowTest, RejectsBadRows) {
  struct Case {
    ResultRow row;
    const char* error;
  };
  const Case kCases[] = {
      {Row({"t"}), "probe returned 1 columns, expected 11"},
      {Row({nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, "1", "f", "", "on", nullptr}),
       "probe returned no pg_is_in_recovery() value"},
      {Row({"f", "zz", nullptr, nullptr, nullptr, nullptr, "1", "f", "", "on", nullptr}),
       "probe returned a malformed LSN 'zz'"},
      {Row({"t", nullptr, "0/1", "0/1", "soon", nullptr, "1", "f", "", "on", nullptr}),
       "probe returned a malformed replay lag 'soon'"},
      {Row({"f", "0/1", nullptr, nullptr, nullptr, nullptr, "1.5", "f", "", "on", nullptr}),
       "probe returned a malformed timeline '1.5'"},
  };
  for (const Case& c : kCases) {
    std::string error;
    EXPECT_FALSE(ParseProbeRow(c.row, &error).has_value()) << c.error;
    EXPECT_EQ(error, c.error);
  }
}

TEST(ProbeSqlTest, IsOneStatement) {
  const std::string sql = kProbeSql;
  EXPECT_EQ(sql.find(';'), std::string::npos);
  EXPECT_NE(sql.find("pg_is_in_recovery()"), std::string::npos);
  EXPECT_NE(sql.find("pg_stat_wal_receiver"), std::string::npos);
}

}  // namespace
}  // namespace pgrelay::health
