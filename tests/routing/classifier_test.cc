#include "routing/classifier.h"

#include <gtest/gtest.h>

#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "routing/classification_cache.h"
#include "routing/function_catalog.h"
#include "routing/sql_scan.h"
#include "tests/routing/corpus.h"

#ifndef PGRELAY_TEST_DATA_DIR
#define PGRELAY_TEST_DATA_DIR "tests"
#endif

namespace pgrelay::routing {
namespace {

using testing::CorpusEntry;
using testing::LoadCorpus;

static_assert(sizeof(Classification) <= 32, "Classification must stay small: it is cached");

FunctionLists DefaultLists() {
  const config::RoutingConfig routing;
  return {routing.side_effect_free_functions, routing.primary_functions};
}

// The user functions the corpus assumes (see the top of corpus.tsv).
std::vector<FunctionEntry> TestUserEntries() {
  return {
      {"public", "user_immutable", Volatility::kImmutable, false, false},
      {"public", "user_stable", Volatility::kStable, false, false},
      {"public", "insert_order", Volatility::kVolatile, false, false},
      {"public", "row_total", Volatility::kVolatile, false, true},
      {"public", "===", Volatility::kVolatile, true, false},
      {"public", "@@@", Volatility::kImmutable, true, false},
  };
}

std::shared_ptr<const FunctionCatalog> TestCatalog() {
  return FunctionCatalog::Create(TestUserEntries(), DefaultLists());
}

ClassifierOptions TestOptions() {
  ClassifierOptions options;
  options.rules = {{"reports_needing_fresh_data", config::Route::kPrimary},
                   {"(?i)^\\s*select\\s+heavy_report_fn", config::Route::kReplica}};
  return options;
}

std::optional<Flag> FlagByName(std::string_view name) {
  for (int bit = 0; bit < 64; ++bit) {
    const Flag f = static_cast<Flag>(uint64_t{1} << bit);
    if (ToString(f) == name) return f;
  }
  return std::nullopt;
}

// Checks one corpus entry; returns what is wrong, empty if nothing.
std::string Check(const CorpusEntry& e, const Classification& c) {
  std::string problems;
  auto fail = [&](const std::string& what) { problems += "  " + what + "\n"; };
  const std::string route = c.target == Target::kPrimary ? "write" : "read";
  if (route != e.route) fail("route " + route + ", want " + e.route);
  std::istringstream checks(e.checks);
  std::string check;
  while (checks >> check) {
    if (check == "-") continue;
    const size_t eq = check.find('=');
    const std::string key = eq == std::string::npos ? check : check.substr(0, eq);
    const std::string want = eq == std::string::npos ? "" : check.substr(eq + 1);
    auto expect = [&](std::string_view got) {
      if (got != want) fail(key + "=" + std::string(got) + ", want " + want);
    };
    if (key == "txn") {
      expect(ToString(c.txn));
    } else if (key == "access") {
      expect(ToString(c.txn_access));
    } else if (key == "iso") {
      expect(ToString(c.isolation));
    } else if (key == "deferrable") {
      expect(ToString(c.deferrable));
    } else if (key == "hint") {
      expect(ToString(c.hint));
    } else if (key == "count") {
      expect(std::to_string(c.statement_count));
    } else if (key == "items") {
      expect(std::to_string(c.session_items().size()));
    } else if (key == "item") {
      // KIND:NAME[=VALUE]
      const size_t colon = want.find(':');
      const std::string kind = want.substr(0, colon);
      const std::string rest = colon == std::string::npos ? "" : want.substr(colon + 1);
      const size_t value_eq = rest.find('=');
      const std::string name = rest.substr(0, value_eq);
      bool found = false;
      for (const SessionItem& item : c.session_items()) {
        if (ToString(item.kind) == kind && item.name == name &&
            (value_eq == std::string::npos || item.value == rest.substr(value_eq + 1))) {
          found = true;
        }
      }
      if (!found) fail("no session item " + want);
    } else if (check.front() == '!') {
      const std::optional<Flag> f = FlagByName(check.substr(1));
      if (!f) {
        fail("unknown flag " + check);
      } else if (c.Has(*f)) {
        fail("flag " + check.substr(1) + " set");
      }
    } else {
      const std::optional<Flag> f = FlagByName(check);
      if (!f) {
        fail("unknown check " + check);
      } else if (!c.Has(*f)) {
        fail("flag " + check + " not set");
      }
    }
  }
  return problems;
}

std::vector<CorpusEntry> Corpus() {
  return LoadCorpus(PGRELAY_TEST_DATA_DIR "/routing/corpus.tsv");
}

TEST(ClassifierCorpusTest, EveryLabelMatches) {
  const std::vector<CorpusEntry> corpus = Corpus();
  ASSERT_GE(corpus.size(), 400u);
  Classifier classifier(TestCatalog(), TestOptions());
  std::string failures;
  int reads = 0;
  int writes = 0;
  for (const CorpusEntry& e : corpus) {
    (e.route == "read" ? reads : writes)++;
    const Classification uncached = classifier.ClassifyUncached(e.sql);
    const Classification first = classifier.Classify(e.sql);
    const Classification second = classifier.Classify(e.sql);  // from the cache
    std::string problems = Check(e, uncached);
    if (!(first == uncached)) problems += "  Classify differs from ClassifyUncached\n";
    if (!(second == first)) problems += "  the cached classification differs\n";
    if (!problems.empty()) {
      failures += "corpus.tsv:" + std::to_string(e.line) + ": " + e.sql + "\n  got " +
                  ToJson(uncached) + "\n" + problems;
    }
  }
  EXPECT_EQ(failures, "");
  EXPECT_GE(reads, 150);
  EXPECT_GE(writes, 150);
}

// The pre-check answers without the parser; where it answers, it must agree with the parser.
TEST(ClassifierPrecheckTest, AgreesWithTheParser) {
  const std::shared_ptr<const FunctionCatalog> catalog = TestCatalog();
  ClassifierOptions options;
  Classifier classifier(catalog, options);
  std::vector<std::string> statements;
  for (const CorpusEntry& e : Corpus()) statements.push_back(e.sql);
  // Shapes around the pre-check's grammar, accepted or not.
  for (const char* s :
       {"SELECT 1",
        "select 1;",
        "SELECT * FROM t",
        "SELECT a, b FROM t WHERE c = 1",
        "SELECT a FROM t WHERE b <> 'x' AND c >= $1 ORDER BY a DESC, b LIMIT 5 OFFSET 10",
        "SELECT a FROM t WHERE b != 2",
        "SELECT * FROM select",
        "SELECT * FROM t WHERE order = 1",
        "SELECT a FROM t FOR UPDATE",
        "SELECT a FROM t WHERE b = 1 FOR SHARE",
        "SELECT nextval FROM t",
        "SELECT a FROM t WHERE b = 'it''s'",
        "SELECT a FROM t.x",
        "SELECT 'a\\b'",
        "SELECT E'a'",
        "SELECT a FROM t WHERE b = -1",
        "BEGIN",
        "begin work;",
        "START TRANSACTION",
        "START",
        "COMMIT",
        "END TRANSACTION",
        "ROLLBACK",
        "ABORT WORK",
        "ROLLBACK TO s",
        "COMMIT AND CHAIN",
        "BEGIN READ WRITE",
        "SELECT 1 /* c */",
        "SELECT /* pgrelay:primary */ 1",
        "SELECT 1 -- x",
        "SELECT a FROM t LIMIT ALL",
        "SELECT current_user",
        "SELECT all",
        "SELECT 1e5",
        "SELECT 123abc",
        "SELECT a FROM t WHERE b = 1 AND",
        "SELECT a FROM \"T\"",
        "SELECT 1; SELECT 2",
        "SELECT a FROM t WHERE b = 1 OR c = 2",
        "SELECT a FROM t ORDER BY a USING <",
        "SELECT café FROM t",
        "SELECT a$b FROM t",
        "SELECT * FROM t WHERE a = $1::int",
        "SELECT x FROM y WHERE z = 'pgrelay:replica'",
        "SELECT 1.5, .5, 5.",
        "INSERT INTO t VALUES (1)",
        "insert into t (a, b, c) values (1, 'x', $1), (-2, CURRENT_DATE, 3.5);",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 4242, -1234, "
        "CURRENT_TIMESTAMP);",
        "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 4242;",
        "UPDATE t SET a = 1, b = b - 2, c = $1, d = 'x' WHERE e = 1 AND f <> 'y'",
        "UPDATE t SET a = a + b",
        "DELETE FROM t",
        "delete from t where a = 1 and b >= $2",
        "DELETE FROM t WHERE a = -1",
        "UPDATE t SET a = 1 RETURNING a",
        "INSERT INTO t VALUES (nextval('s'))",
        "UPDATE t SET a = now()",
        "/* pgrelay:replica */ UPDATE t SET a = 1"}) {
    statements.push_back(s);
  }
  int accepted = 0;
  for (const std::string& sql : statements) {
    Classification pre;
    if (!PrecheckSimple(sql, catalog->simple_operators_safe(), &pre)) continue;
    ++accepted;
    Classification full = classifier.ClassifyUncached(sql);
    // Hints are applied after both; compare the parser's classification without them.
    full.hint = Hint::kNone;
    full.flags &= ~(static_cast<uint64_t>(Flag::kHintFromComment) |
                    static_cast<uint64_t>(Flag::kHintFromRule));
    if (FindCommentHint(sql) == Hint::kNone) {
      EXPECT_EQ(ToJson(pre), ToJson(full)) << sql;
    } else {
      // The parser's target has the hint applied, the pre-check's not yet.
      EXPECT_EQ(pre.flags, full.flags) << sql;
      EXPECT_EQ(pre.target, pre.Has(Flag::kWrite) ? Target::kPrimary : Target::kReplica) << sql;
    }
  }
  EXPECT_GE(accepted, 38);
}

TEST(ClassifierPrecheckTest, RejectsWhatItCannotProve) {
  const std::shared_ptr<const FunctionCatalog> catalog = TestCatalog();
  for (const char* s : {"SELECT a FROM t FOR UPDATE",
                        "SELECT nextval('s')",
                        "SELECT f()",
                        "SELECT a FROM t.x",
                        "SELECT t.f FROM t",
                        "SELECT * FROM select",
                        "SELECT a FROM t WHERE b = E'x'",
                        "SELECT a FROM t WHERE b = 'a\\b'",
                        "SELECT 1; SELECT 2",
                        "BEGIN READ WRITE",
                        "START",
                        "ROLLBACK TO s",
                        "SELECT * INTO x FROM t",
                        "INSERT INTO t VALUES (f())",
                        "INSERT INTO t VALUES (1) RETURNING a",
                        "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
                        "INSERT INTO t SELECT 1",
                        "INSERT INTO t DEFAULT VALUES",
                        "INSERT INTO t.x VALUES (1)",
                        "UPDATE t SET a = f(1)",
                        "UPDATE t SET a = 1 FROM u",
                        "UPDATE t SET a = -b",
                        "UPDATE ONLY t SET a = 1",
                        "UPDATE t SET a = a +- 1",
                        "UPDATE t SET a = current_user",
                        "UPDATE t SET (a, b) = (1, 2)",
                        "DELETE FROM t WHERE a IN (SELECT 1)",
                        "DELETE FROM t WHERE CURRENT OF c",
                        "DELETE FROM t USING u",
                        "DELETE FROM pg_temp.t",
                        "WITH x AS (SELECT 1) DELETE FROM t",
                        "SELECT a FROM t WHERE b = -1",
                        "SELECT a FROM pg_temp.t",
                        "SELECT $$x$$"}) {
    Classification c;
    EXPECT_FALSE(PrecheckSimple(s, catalog->simple_operators_safe(), &c)) << s;
  }
  // A user's volatile "=" turns the SELECT pre-check off.
  const std::vector<FunctionEntry> volatile_eq = {
      {"public", "=", Volatility::kVolatile, true, false}};
  const auto catalog2 = FunctionCatalog::Create(volatile_eq, DefaultLists());
  EXPECT_FALSE(catalog2->simple_operators_safe());
  Classification c;
  EXPECT_FALSE(PrecheckSimple("SELECT a FROM t WHERE b = 1", false, &c));
  EXPECT_FALSE(PrecheckSimple("UPDATE t SET a = 1 WHERE b = 1", false, &c));
  EXPECT_TRUE(PrecheckSimple("BEGIN", false, &c));
  Classifier classifier(catalog2, ClassifierOptions{});
  EXPECT_EQ(classifier.Classify("SELECT a FROM t WHERE b = 1").target, Target::kPrimary);
}

TEST(ClassifierTest, SessionItemsCarryNamesValuesAndStatementText) {
  Classifier classifier(TestCatalog(), ClassifierOptions{});
  const std::string sql =
      "SET search_path = app, \"Public\"; SELECT set_config('a.b', 'it''s', false);"
      " PREPARE q(int) AS INSERT INTO t VALUES ($1); DEALLOCATE ALL";
  const Classification c = classifier.Classify(sql);
  ASSERT_EQ(c.session_items().size(), 4u) << ToJson(c);
  const std::vector<SessionItem>& items = c.session_items();
  EXPECT_EQ(items[0].kind, Flag::kSetSession);
  EXPECT_EQ(items[0].name, "search_path");
  EXPECT_EQ(items[0].value, "'app', 'Public'");
  EXPECT_EQ(items[0].statement, "SET search_path = app, \"Public\"");
  EXPECT_EQ(items[1].kind, Flag::kSetConfigSession);
  EXPECT_EQ(items[1].name, "a.b");
  EXPECT_EQ(items[1].value, "'it''s'");
  EXPECT_EQ(items[1].statement, " SELECT set_config('a.b', 'it''s', false)");
  EXPECT_EQ(items[2].kind, Flag::kPrepare);
  EXPECT_EQ(items[2].name, "q");
  EXPECT_EQ(items[2].target, Target::kPrimary);
  EXPECT_EQ(items[3].kind, Flag::kDeallocateAll);
  EXPECT_EQ(items[3].name, "");
  EXPECT_EQ(c.statement_count, 4);
  EXPECT_TRUE(c.Has(Flag::kMultiStatement));
  EXPECT_TRUE(c.changes_session_state());
  EXPECT_EQ(c.target, Target::kPrimary);

  const Classification read_prepare = classifier.Classify("PREPARE r AS SELECT 1");
  ASSERT_EQ(read_prepare.session_items().size(), 1u);
  EXPECT_EQ(read_prepare.session_items()[0].target, Target::kReplica);
  EXPECT_EQ(read_prepare.target, Target::kReplica);

  const Classification plain = classifier.Classify("SELECT 1 FROM t");
  EXPECT_EQ(plain.items, nullptr);
  EXPECT_FALSE(plain.changes_session_state());
}

TEST(ClassifierTest, SessionCharacteristicsBecomeDefaultSettings) {
  Classifier classifier(TestCatalog(), ClassifierOptions{});
  const Classification c = classifier.Classify(
      "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, "
      "DEFERRABLE");
  EXPECT_EQ(c.txn, TxnKind::kSetSessionCharacteristics);
  EXPECT_EQ(c.isolation, Isolation::kRepeatableRead);
  EXPECT_EQ(c.txn_access, TxnAccess::kReadOnly);
  EXPECT_EQ(c.deferrable, Deferrable::kDeferrable);
  ASSERT_EQ(c.session_items().size(), 3u);
  EXPECT_EQ(c.session_items()[0].name, "default_transaction_isolation");
  EXPECT_EQ(c.session_items()[0].value, "'repeatable read'");
  EXPECT_EQ(c.session_items()[1].name, "default_transaction_read_only");
  EXPECT_EQ(c.session_items()[1].value, "on");
  EXPECT_EQ(c.session_items()[2].name, "default_transaction_deferrable");
}

TEST(ClassifierTest, TransactionFieldsComeFromTheFirstTransactionStatement) {
  Classifier classifier(TestCatalog(), ClassifierOptions{});
  const Classification c =
      classifier.Classify("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1; COMMIT");
  EXPECT_EQ(c.txn, TxnKind::kBegin);
  EXPECT_EQ(c.isolation, Isolation::kRepeatableRead);
  EXPECT_EQ(c.statement_count, 3);
  EXPECT_EQ(c.target, Target::kReplica);
}

TEST(ClassifierTest, FunctionDdlAsksForACatalogRefresh) {
  Classifier classifier(TestCatalog(), ClassifierOptions{});
  EXPECT_TRUE(classifier.Classify("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
                  .creates_or_changes_functions());
  EXPECT_TRUE(classifier.Classify("SELECT 1; DROP FUNCTION f()").creates_or_changes_functions());
  EXPECT_FALSE(classifier.Classify("CREATE TABLE f (a int)").creates_or_changes_functions());
  EXPECT_FALSE(classifier.Classify("SELECT 1").creates_or_changes_functions());
}

TEST(ClassifierTest, UnparseableGoesToThePrimary) {
  Classifier classifier(TestCatalog(), ClassifierOptions{});
  const Classification c = classifier.Classify("SELEC 1");
  EXPECT_TRUE(c.parse_error());
  EXPECT_EQ(c.target, Target::kPrimary);
  // A NUL byte would cut the text short for the parser: never guess.
  const Classification nul = classifier.Classify(std::string_view("SELECT 1\0; DELETE FROM t", 24));
  EXPECT_TRUE(nul.parse_error());
  EXPECT_EQ(nul.target, Target::kPrimary);
  EXPECT_GE(classifier.stats().parse_errors, 2u);
}

TEST(ClassifierTest, HugeAndDeepInputsNeverCrash) {
  Classifier classifier(TestCatalog(), ClassifierOptions{});
  // A left-deep expression of 100k terms makes libpg_query's recursive output overflow an 8 MB
  // stack: it must not be parsed.
  std::string chain = "SELECT 1";
  for (int i = 0; i < 100000; ++i) chain += "+1";
  const Classification deep = classifier.Classify(chain);
  EXPECT_TRUE(deep.Has(Flag::kTooDeep));
  EXPECT_EQ(deep.target, Target::kPrimary);
  // Deep but fine.
  std::string parens = "SELECT ";
  for (int i = 0; i < 2000; ++i) parens += "(";
  parens += "1";
  for (int i = 0; i < 2000; ++i) parens += ")";
  EXPECT_EQ(classifier.Classify(parens).target, Target::kReplica);
  // Too many parentheses for the parser's own stack: its error, not a crash.
  std::string more_parens = "SELECT ";
  for (int i = 0; i < 100000; ++i) more_parens += "(";
  EXPECT_EQ(classifier.Classify(more_parens).target, Target::kPrimary);
  // Nested subqueries.
  std::string subqueries;
  for (int i = 0; i < 300; ++i) subqueries += "SELECT (";
  subqueries += "SELECT nextval('s')";
  for (int i = 0; i < 300; ++i) subqueries += ")";
  EXPECT_TRUE(classifier.Classify(subqueries).Has(Flag::kPrimaryFunction));
  // A bulk INSERT is wide, not deep: it is parsed.
  std::string bulk = "INSERT INTO t VALUES ";
  for (int i = 0; i < 20000; ++i) bulk += (i ? ",(" : "(") + std::to_string(-i) + ", 'x', NULL)";
  const Classification insert = classifier.Classify(bulk);
  EXPECT_FALSE(insert.Has(Flag::kTooDeep));
  EXPECT_TRUE(insert.Has(Flag::kWrite));
  // A long IN list and a long AND chain of a SELECT.
  std::string in_list = "SELECT * FROM t WHERE id IN (";
  for (int i = 0; i < 20000; ++i) in_list += (i ? "," : "") + std::to_string(i);
  in_list += ")";
  EXPECT_EQ(classifier.Classify(in_list).target, Target::kReplica);
}

TEST(ClassifierTest, HintsFromCommentsAndRules) {
  Classifier classifier(TestCatalog(), TestOptions());
  Classification c = classifier.Classify("SELECT * FROM reports_needing_fresh_data");
  EXPECT_EQ(c.hint, Hint::kPrimary);
  EXPECT_TRUE(c.Has(Flag::kHintFromRule));
  EXPECT_EQ(c.target, Target::kPrimary);
  c = classifier.Classify("  SELECT heavy_report_fn(2)");
  EXPECT_EQ(c.hint, Hint::kReplica);
  EXPECT_EQ(c.target, Target::kReplica);
  // A comment wins over a rule.
  c = classifier.Classify("/* pgrelay:replica */ SELECT * FROM reports_needing_fresh_data");
  EXPECT_EQ(c.hint, Hint::kReplica);
  EXPECT_TRUE(c.Has(Flag::kHintFromComment));
  EXPECT_FALSE(c.Has(Flag::kHintFromRule));
  // Rules also apply to pre-checked statements.
  c = classifier.Classify("SELECT a FROM reports_needing_fresh_data WHERE b = 1");
  EXPECT_EQ(c.target, Target::kPrimary);
  EXPECT_EQ(classifier.Classify("SELECT a FROM reports_needing_fresh_data WHERE b = 1").hint,
            Hint::kPrimary);
  // A rule that does not compile is refused.
  ClassifierOptions bad;
  bad.rules = {{"(unclosed", config::Route::kPrimary}};
  EXPECT_THROW(Classifier(TestCatalog(), bad), std::invalid_argument);
}

TEST(ClassifierTest, CatalogSwapClearsTheCache) {
  Classifier classifier(FunctionCatalog::Builtin(DefaultLists()), ClassifierOptions{});
  EXPECT_EQ(classifier.Classify("SELECT user_immutable()").target, Target::kPrimary);
  EXPECT_EQ(classifier.cache().size(), 1u);
  classifier.SetCatalog(TestCatalog());
  EXPECT_EQ(classifier.cache().size(), 0u);
  EXPECT_EQ(classifier.Classify("SELECT user_immutable()").target, Target::kReplica);
  const auto same = classifier.catalog();
  classifier.SetCatalog(same);
  EXPECT_EQ(classifier.cache().size(), 1u);
}

TEST(ClassifierCacheTest, HitsMissesAndStats) {
  ClassifierOptions options;
  options.precheck = false;
  Classifier classifier(TestCatalog(), options);
  classifier.Classify("SELECT a FROM t");
  classifier.Classify("SELECT a FROM t");
  classifier.Classify("SELECT a FROM t ");  // different text: a different entry
  classifier.Classify("SELECT a FROM t");
  EXPECT_EQ(classifier.stats().hits, 2u);
  EXPECT_EQ(classifier.stats().misses, 2u);
  EXPECT_EQ(classifier.stats().parsed, 2u);
  EXPECT_EQ(classifier.cache().size(), 2u);
}

TEST(ClassifierCacheTest, PrecheckedStatementsAreNotCachedWithoutRules) {
  Classifier classifier(TestCatalog(), ClassifierOptions{});
  classifier.Classify("SELECT a FROM t WHERE b = 1");
  classifier.Classify("BEGIN");
  EXPECT_EQ(classifier.stats().prechecked, 2u);
  EXPECT_EQ(classifier.stats().parsed, 0u);
  EXPECT_EQ(classifier.cache().size(), 0u);
}

TEST(ClassifierCacheTest, EvictsTheLeastRecentlyUsedWithinTheBound) {
  ClassifierOptions options;
  options.cache_size = 3;
  options.precheck = false;
  Classifier classifier(TestCatalog(), options);
  classifier.Classify("SELECT 1");
  classifier.Classify("SELECT 2");
  classifier.Classify("SELECT 3");
  classifier.Classify("SELECT 1");  // now the most recently used
  classifier.Classify("SELECT 4");  // evicts SELECT 2
  EXPECT_EQ(classifier.cache().size(), 3u);
  EXPECT_EQ(classifier.cache().evictions(), 1u);
  const uint64_t hits = classifier.stats().hits;
  classifier.Classify("SELECT 1");
  classifier.Classify("SELECT 3");
  classifier.Classify("SELECT 4");
  EXPECT_EQ(classifier.stats().hits, hits + 3);
  classifier.Classify("SELECT 2");
  EXPECT_EQ(classifier.stats().hits, hits + 3);
  for (int i = 0; i < 1000; ++i) {
    classifier.Classify("SELECT " + std::to_string(i % 17) + " FROM t");
    ASSERT_LE(classifier.cache().size(), 3u);
  }
}

TEST(ClassifierCacheTest, ByteBoundAndLongTexts) {
  ClassificationCache cache(/*capacity=*/100, /*max_bytes=*/64, /*max_text_bytes=*/40);
  Classification c;
  c.target = Target::kPrimary;
  cache.Insert(std::string(30, 'a'), c);
  cache.Insert(std::string(30, 'b'), c);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.bytes(), 60u);
  cache.Insert(std::string(30, 'c'), c);  // over 64 bytes: evicts 'a'
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_LE(cache.bytes(), 64u);
  EXPECT_EQ(cache.Find(std::string(30, 'a')), nullptr);
  ASSERT_NE(cache.Find(std::string(30, 'c')), nullptr);
  EXPECT_EQ(cache.Find(std::string(30, 'c'))->target, Target::kPrimary);
  cache.Insert(std::string(41, 'd'), c);  // longer than max_text_bytes: not cached
  EXPECT_EQ(cache.Find(std::string(41, 'd')), nullptr);
  cache.Clear();
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
  ClassificationCache off(0, 1 << 20, 1 << 10);
  off.Insert("SELECT 1", c);
  EXPECT_EQ(off.Find("SELECT 1"), nullptr);
}

TEST(ClassifierCacheTest, ManyEvictionsKeepItConsistent) {
  ClassificationCache cache(64, 1 << 20, 1 << 10);
  Classification c;
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 200; ++i) {
      const std::string key = "k" + std::to_string((i * 7 + round) % 150);
      if (cache.Find(key) == nullptr) {
        c.statement_count = static_cast<uint16_t>(i);
        cache.Insert(key, c);
      }
      ASSERT_LE(cache.size(), 64u);
    }
  }
  // Every key found maps to its own entry.
  size_t found = 0;
  for (int i = 0; i < 150; ++i) found += cache.Find("k" + std::to_string(i)) != nullptr;
  EXPECT_EQ(found, cache.size());
}

TEST(FunctionCatalogTest, BuiltinsListsAndUserFunctions) {
  const auto builtin = FunctionCatalog::Builtin(DefaultLists());
  EXPECT_GT(builtin->function_count(), 2500u);
  EXPECT_EQ(builtin->LookupFunction("", "lower").function_class, FunctionClass::kSafe);
  EXPECT_EQ(builtin->LookupFunction("pg_catalog", "lower").function_class, FunctionClass::kSafe);
  EXPECT_EQ(builtin->LookupFunction("", "now").function_class, FunctionClass::kSafe);
  EXPECT_EQ(builtin->LookupFunction("", "random").function_class, FunctionClass::kSafe);
  EXPECT_EQ(builtin->LookupFunction("", "nextval").function_class, FunctionClass::kPrimary);
  EXPECT_EQ(builtin->LookupFunction("", "txid_current").function_class, FunctionClass::kPrimary);
  EXPECT_EQ(builtin->LookupFunction("", "pg_reload_conf").function_class, FunctionClass::kVolatile);
  EXPECT_EQ(builtin->LookupFunction("", "no_such_function").function_class,
            FunctionClass::kVolatile);
  EXPECT_EQ(builtin->LookupFunction("app", "lower").function_class, FunctionClass::kVolatile);
  EXPECT_EQ(builtin->LookupFunction("", "set_config").role, FunctionRole::kSetConfig);
  EXPECT_EQ(builtin->LookupFunction("pg_catalog", "pg_advisory_lock").role,
            FunctionRole::kSessionAdvisoryLock);
  EXPECT_EQ(builtin->LookupFunction("", "pg_try_advisory_xact_lock").role,
            FunctionRole::kXactAdvisoryLock);
  EXPECT_EQ(builtin->LookupOperator("", "+"), FunctionClass::kSafe);
  EXPECT_EQ(builtin->LookupOperator("pg_catalog", "@>"), FunctionClass::kSafe);
  EXPECT_EQ(builtin->LookupOperator("", "==="), FunctionClass::kVolatile);
  EXPECT_TRUE(builtin->simple_operators_safe());

  // A user function named like a side-effect-free built-in keeps the unqualified name volatile:
  // the defaults list pg_catalog.random, not random.
  const std::vector<FunctionEntry> user = {
      {"public", "random", Volatility::kVolatile, false, false},
      {"public", "lower", Volatility::kVolatile, false, false},
      {"app", "report", Volatility::kStable, false, false},
      {"app", "report", Volatility::kVolatile, false, false},  // a volatile overload
      {"app", "pure", Volatility::kImmutable, false, false},
  };
  FunctionLists lists = DefaultLists();
  lists.side_effect_free.push_back("app.cache_lookup");
  lists.primary.push_back("app.pure");
  lists.primary.push_back("legacy_writer");
  const auto catalog = FunctionCatalog::Create(user, lists);
  EXPECT_EQ(catalog->user_entry_count(), 5u);
  EXPECT_EQ(catalog->LookupFunction("", "random").function_class, FunctionClass::kVolatile);
  EXPECT_EQ(catalog->LookupFunction("pg_catalog", "random").function_class, FunctionClass::kSafe);
  EXPECT_EQ(catalog->LookupFunction("", "lower").function_class, FunctionClass::kVolatile);
  EXPECT_EQ(catalog->LookupFunction("app", "report").function_class, FunctionClass::kVolatile);
  EXPECT_EQ(catalog->LookupFunction("app", "pure").function_class, FunctionClass::kPrimary);
  EXPECT_EQ(catalog->LookupFunction("", "pure").function_class, FunctionClass::kPrimary);
  EXPECT_EQ(catalog->LookupFunction("app", "cache_lookup").function_class, FunctionClass::kSafe);
  EXPECT_EQ(catalog->LookupFunction("", "legacy_writer").function_class, FunctionClass::kPrimary);
  // Long qualified names do not overflow the lookup buffer.
  EXPECT_EQ(catalog->LookupFunction(std::string(300, 's'), std::string(300, 'f')).function_class,
            FunctionClass::kVolatile);
}

TEST(FunctionCatalogTest, AttributeNotation) {
  const auto catalog = TestCatalog();
  EXPECT_EQ(catalog->LookupAttribute("row_total"), FunctionClass::kVolatile);
  EXPECT_EQ(catalog->LookupAttribute("insert_order"), FunctionClass::kSafe);  // not row-callable
  EXPECT_EQ(catalog->LookupAttribute("id"), FunctionClass::kSafe);
}

TEST(SqlScanTest, CommentHints) {
  EXPECT_EQ(FindCommentHint("SELECT 1"), Hint::kNone);
  EXPECT_EQ(FindCommentHint("/* pgrelay:primary */ SELECT 1"), Hint::kPrimary);
  EXPECT_EQ(FindCommentHint("SELECT 1 -- pgrelay:replica"), Hint::kReplica);
  EXPECT_EQ(FindCommentHint("SELECT 1 --pgrelay:replica\nFROM t"), Hint::kReplica);
  EXPECT_EQ(FindCommentHint("/* a /* pgrelay:replica */ b */ SELECT 1"), Hint::kReplica);
  EXPECT_EQ(FindCommentHint("SELECT '/* pgrelay:primary */'"), Hint::kNone);
  EXPECT_EQ(FindCommentHint("SELECT E'\\' /* pgrelay:primary */'"), Hint::kNone);
  EXPECT_EQ(FindCommentHint("SELECT 'a\\' /* pgrelay:primary */"), Hint::kPrimary);
  EXPECT_EQ(FindCommentHint("SELECT $x$ -- pgrelay:primary $x$"), Hint::kNone);
  EXPECT_EQ(FindCommentHint("SELECT $1 -- pgrelay:primary"), Hint::kPrimary);
  EXPECT_EQ(FindCommentHint("SELECT \"-- pgrelay:primary\""), Hint::kNone);
  EXPECT_EQ(FindCommentHint("SELECT U&\"/* pgrelay:primary */\""), Hint::kNone);
  EXPECT_EQ(FindCommentHint("SELECT 1 /* pgrelay:replicas */"), Hint::kNone);
  EXPECT_EQ(FindCommentHint("SELECT 1 /* xpgrelay:replica */"), Hint::kNone);
  EXPECT_EQ(FindCommentHint("SELECT 1 /* pgrelay:Replica */ -- pgrelay:primary"), Hint::kPrimary);
}

TEST(SqlScanTest, ParseDepthEstimate) {
  std::string bulk = "INSERT INTO t VALUES ";
  for (int i = 0; i < 5000; ++i) bulk += (i ? ",(" : "(") + std::to_string(i) + ", -1, NULL)";
  EXPECT_LT(EstimateParseDepth(bulk), 20u);
  std::string chain = "SELECT 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  EXPECT_GT(EstimateParseDepth(chain), 5000u);
  std::string unions = "SELECT 1";
  for (int i = 0; i < 5000; ++i) unions += " UNION SELECT 1, 2";
  EXPECT_GT(EstimateParseDepth(unions), 5000u);
  EXPECT_LT(EstimateParseDepth("SELECT 1; SELECT 2; SELECT 3"), 5u);
}

}  // namespace
}  // namespace pgrelay::routing
