// Classifier: classifies SQL strings (simple Query or Parse message text) on PostgreSQL's own
// parser (libpg_query, PostgreSQL 15 grammar), with a per-worker LRU cache keyed by the text.
// One per worker; not thread-safe. See docs/classifier.md for the rules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "routing/classification.h"
#include "routing/classification_cache.h"
#include "routing/function_catalog.h"

namespace pgrelay::routing {

struct ClassifierOptions {
  size_t cache_size = 10000;                // entries; 0 = no cache
  size_t cache_max_bytes = 16u << 20;       // sum of cached texts
  size_t cache_max_text_bytes = 64u << 10;  // longer texts are classified every time
  bool precheck = true;  // classify the simplest statements without the parser (sql_scan.h)
  std::vector<config::RoutingRule> rules;  // ordered; the first match sets the hint

  static ClassifierOptions FromConfig(const config::RoutingConfig& routing);
};

class Classifier {
 public:
  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;      // every classification that was not a cache hit
    uint64_t prechecked = 0;  // misses answered by the pre-check
    uint64_t parsed = 0;      // misses that ran the parser
    uint64_t parse_errors = 0;
    uint64_t rule_errors = 0;  // rules that gave up on a text (too complex to match)
  };

  // Throws std::invalid_argument if a rule's regular expression does not compile (the config
  // loader has already checked them).
  Classifier(std::shared_ptr<const FunctionCatalog> catalog, ClassifierOptions options);
  ~Classifier();
  Classifier(const Classifier&) = delete;
  Classifier& operator=(const Classifier&) = delete;

  // The classification of `sql`. A cache hit costs a hash of the text and allocates nothing.
  Classification Classify(std::string_view sql);
  // The parser's classification, bypassing the cache and the pre-check (tests, tools).
  Classification ClassifyUncached(std::string_view sql);

  // Replaces the catalog (e.g. after the health monitor reloaded the user functions); clears
  // the cache if it is a different catalog.
  void SetCatalog(std::shared_ptr<const FunctionCatalog> catalog);
  const std::shared_ptr<const FunctionCatalog>& catalog() const { return catalog_; }
  // Config reload: new rules and cache limits; clears the cache (stats keep counting).
  void SetOptions(const ClassifierOptions& options);

  const Stats& stats() const { return stats_; }
  const ClassificationCache& cache() const { return cache_; }

 private:
  class Rules;
  class Parser;

  Classification ClassifyMiss(std::string_view sql);
  void ApplyHint(std::string_view sql, Classification* c);

  std::shared_ptr<const FunctionCatalog> catalog_;
  bool precheck_;
  ClassificationCache cache_;
  std::unique_ptr<Rules> rules_;
  std::unique_ptr<Parser> parser_;  // reusable JSON parser and its memory
  Stats stats_;
};

}  // namespace pgrelay::routing
