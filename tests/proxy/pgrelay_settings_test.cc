#include "proxy/pgrelay_settings.h"

#include <gtest/gtest.h>

#include "routing/classifier.h"

namespace pgrelay::proxy {
namespace {

PgrelayCommand Parse(std::string_view sql) {
  static routing::Classifier classifier(routing::FunctionCatalog::Builtin({}),
                                        routing::ClassifierOptions{});
  return ParsePgrelayCommand(sql, classifier.Classify(sql));
}

TEST(PgrelaySettingsTest, RecognizesSetResetShow) {
  PgrelayCommand c = Parse("SET pgrelay.min_lsn = '0/3000060'");
  EXPECT_EQ(c.kind, PgrelayCommand::Kind::kSet);
  EXPECT_EQ(c.name, "pgrelay.min_lsn");
  EXPECT_EQ(c.value, "0/3000060");
  EXPECT_FALSE(c.local);

  c = Parse("set PGRELAY.MIN_LSN to '1/2';");
  EXPECT_EQ(c.kind, PgrelayCommand::Kind::kSet);
  EXPECT_EQ(c.name, "pgrelay.min_lsn");
  EXPECT_EQ(c.value, "1/2");

  EXPECT_TRUE(Parse("SET LOCAL pgrelay.min_lsn = '0/1'").local);
  EXPECT_EQ(Parse("RESET pgrelay.min_lsn").kind, PgrelayCommand::Kind::kReset);
  EXPECT_EQ(Parse("SET pgrelay.min_lsn TO DEFAULT").kind, PgrelayCommand::Kind::kReset);

  c = Parse("  SHOW   pgrelay.causal_lsn ; ");
  EXPECT_EQ(c.kind, PgrelayCommand::Kind::kShow);
  EXPECT_EQ(c.name, "pgrelay.causal_lsn");
}

TEST(PgrelaySettingsTest, LeavesEverythingElseAlone) {
  for (const char* sql : {"SET search_path = public", "SHOW search_path", "SELECT 'pgrelay.min_lsn'",
                          "SET pgrelay.min_lsn = '0/1'; SELECT 1", "SHOW pgrelay.x extra",
                          "SHOWpgrelay.x", "RESET ALL"}) {
    EXPECT_EQ(Parse(sql).kind, PgrelayCommand::Kind::kNone) << sql;
  }
}

TEST(PgrelaySettingsTest, ExtractsOptionsAndKeepsTheRest) {
  std::string options = "-c search_path=a\\ b -c pgrelay.min_lsn=0/5 --pgrelay.other=x -cwork_mem=4MB";
  auto found = ExtractPgrelayOptions(&options);
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0], (std::pair<std::string, std::string>{"pgrelay.min_lsn", "0/5"}));
  EXPECT_EQ(found[1], (std::pair<std::string, std::string>{"pgrelay.other", "x"}));
  EXPECT_EQ(options, "-c search_path=a\\ b -cwork_mem=4MB");

  std::string only = "-cpgrelay.min_lsn=0/1";
  EXPECT_EQ(ExtractPgrelayOptions(&only).size(), 1u);
  EXPECT_EQ(only, "");

  std::string none = "-c statement_timeout=5s";
  EXPECT_TRUE(ExtractPgrelayOptions(&none).empty());
  EXPECT_EQ(none, "-c statement_timeout=5s");
}

}  // namespace
}  // namespace pgrelay::proxy
