// Statement classifier benchmarks over tests/routing/corpus.tsv (Google Benchmark). Reports, per
// statement of the corpus, the median / p90 / max time of a cached classification (a cache
// hit), an uncached one (libpg_query + the tree walk) and a miss as the router sees it (the
// pre-check first), plus the mean over the whole corpus and heap allocations per cache hit.
// Build it without sanitizers (docs/classifier.md). Not a test: it only prints numbers.
#include <benchmark/benchmark.h>
#include <pg_query.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "config/config.h"
#include "routing/classifier.h"
#include "routing/function_catalog.h"
#include "tests/routing/corpus.h"

#ifndef PGRELAY_TEST_DATA_DIR
#define PGRELAY_TEST_DATA_DIR "tests"
#endif

// Counts heap allocations, to show that a cache hit makes none.
namespace {
std::atomic<uint64_t> g_allocations{0};
}  // namespace

void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace pgrelay::routing {
namespace {

std::vector<std::string> Statements() {
  std::vector<std::string> out;
  for (const auto& e : testing::LoadCorpus(PGRELAY_TEST_DATA_DIR "/routing/corpus.tsv")) {
    out.push_back(e.sql);
  }
  return out;
}

const std::vector<std::string>& Corpus() {
  static const std::vector<std::string> corpus = Statements();
  return corpus;
}

std::shared_ptr<const FunctionCatalog> Catalog() {
  const config::RoutingConfig routing;
  return FunctionCatalog::Builtin({routing.side_effect_free_functions, routing.primary_functions});
}

enum class Mode { kCached, kUncached, kMiss };

Classification Run(Classifier& classifier, Mode mode, const std::string& sql) {
  switch (mode) {
    case Mode::kCached:
    case Mode::kMiss:
      return classifier.Classify(sql);
    case Mode::kUncached:
      return classifier.ClassifyUncached(sql);
  }
  return {};
}

// Times every statement `reps` times; reports the median, p90 and max over the statements of
// each statement's mean, and the mean over the corpus.
void PerStatement(benchmark::State& state, Mode mode, int reps) {
  ClassifierOptions options;
  if (mode == Mode::kMiss) options.cache_size = 0;
  Classifier classifier(Catalog(), options);
  const std::vector<std::string>& corpus = Corpus();
  for (const std::string& sql : corpus) classifier.Classify(sql);  // warm (and fill the cache)
  std::vector<double> ns(corpus.size());
  for (auto _ : state) {
    for (size_t i = 0; i < corpus.size(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) benchmark::DoNotOptimize(Run(classifier, mode, corpus[i]));
      const auto end = std::chrono::steady_clock::now();
      ns[i] = std::chrono::duration<double, std::nano>(end - start).count() / reps;
    }
  }
  std::vector<double> sorted = ns;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0;
  for (double v : sorted) sum += v;
  state.counters["median_ns"] = sorted[sorted.size() / 2];
  state.counters["p90_ns"] = sorted[sorted.size() * 9 / 10];
  state.counters["max_ns"] = sorted.back();
  state.counters["mean_ns"] = sum / static_cast<double>(sorted.size());
  state.counters["statements"] = static_cast<double>(corpus.size());
}

void BM_ClassifyCached(benchmark::State& state) { PerStatement(state, Mode::kCached, 2000); }
void BM_ClassifyUncached(benchmark::State& state) { PerStatement(state, Mode::kUncached, 20); }
void BM_ClassifyMissWithPrecheck(benchmark::State& state) { PerStatement(state, Mode::kMiss, 20); }
BENCHMARK(BM_ClassifyCached)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_ClassifyUncached)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_ClassifyMissWithPrecheck)->Unit(benchmark::kMillisecond)->Iterations(1);

// Throughput over the corpus, round robin: time per iteration is per statement.
void BM_CachedRoundRobin(benchmark::State& state) {
  Classifier classifier(Catalog(), ClassifierOptions{});
  const std::vector<std::string>& corpus = Corpus();
  for (const std::string& sql : corpus) classifier.Classify(sql);
  size_t i = 0;
  const uint64_t allocations_before = g_allocations.load();
  for (auto _ : state) {
    benchmark::DoNotOptimize(classifier.Classify(corpus[i]));
    if (++i == corpus.size()) i = 0;
  }
  // The pre-checked statements are not cached (they are cheaper to redo); neither allocates.
  state.counters["allocs_per_op"] =
      benchmark::Counter(static_cast<double>(g_allocations.load() - allocations_before) /
                         static_cast<double>(state.iterations()));
}
BENCHMARK(BM_CachedRoundRobin);

void BM_UncachedRoundRobin(benchmark::State& state) {
  Classifier classifier(Catalog(), ClassifierOptions{});
  const std::vector<std::string>& corpus = Corpus();
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(classifier.ClassifyUncached(corpus[i]));
    if (++i == corpus.size()) i = 0;
  }
}
BENCHMARK(BM_UncachedRoundRobin);

// libpg_query's pg_query_parse alone (JSON out), for the share of the uncached time.
void BM_PgQueryParseOnly(benchmark::State& state) {
  const std::vector<std::string>& corpus = Corpus();
  size_t i = 0;
  for (auto _ : state) {
    PgQueryParseResult result = pg_query_parse(corpus[i].c_str());
    benchmark::DoNotOptimize(result.parse_tree);
    pg_query_free_parse_result(result);
    if (++i == corpus.size()) i = 0;
  }
}
BENCHMARK(BM_PgQueryParseOnly);

// Typical shapes one at a time.
void BM_Shape(benchmark::State& state, const char* sql, bool cached) {
  Classifier classifier(Catalog(), ClassifierOptions{});
  classifier.Classify(sql);
  for (auto _ : state) {
    benchmark::DoNotOptimize(cached ? classifier.Classify(sql) : classifier.ClassifyUncached(sql));
  }
}
constexpr char kPointSelect[] = "SELECT id, name, email FROM users WHERE id = $1";
constexpr char kJoin[] =
    "SELECT u.id, count(o.id), sum(o.amount) FROM users u JOIN orders o ON o.user_id = u.id "
    "JOIN items i ON i.order_id = o.id WHERE u.created_at > now() - interval '7 days' "
    "GROUP BY u.id ORDER BY 3 DESC LIMIT 20";
constexpr char kWritingCte[] =
    "WITH moved AS (DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT 10 "
    "FOR UPDATE SKIP LOCKED) RETURNING *) INSERT INTO done SELECT * FROM moved";
BENCHMARK_CAPTURE(BM_Shape, point_select_cached, kPointSelect, true);
BENCHMARK_CAPTURE(BM_Shape, point_select_uncached, kPointSelect, false);
BENCHMARK_CAPTURE(BM_Shape, join_cached, kJoin, true);
BENCHMARK_CAPTURE(BM_Shape, join_uncached, kJoin, false);
BENCHMARK_CAPTURE(BM_Shape, writing_cte_cached, kWritingCte, true);
BENCHMARK_CAPTURE(BM_Shape, writing_cte_uncached, kWritingCte, false);
BENCHMARK_CAPTURE(BM_Shape, begin_cached, "BEGIN", true);

void BM_Precheck(benchmark::State& state) {
  ClassifierOptions options;
  options.cache_size = 0;
  Classifier classifier(Catalog(), options);
  const char* sql = "SELECT id, name FROM users WHERE id = 42 AND status = 'active' LIMIT 1";
  for (auto _ : state) benchmark::DoNotOptimize(classifier.Classify(sql));
}
BENCHMARK(BM_Precheck);

}  // namespace
}  // namespace pgrelay::routing

BENCHMARK_MAIN();
