// pgrelay_classify: classifies SQL read from stdin and prints one JSON object per input, for
// integration tests and for operators checking how a statement will be routed.
//
//   pgrelay_classify [--conninfo CONNINFO] [--whole] [--no-cache]  < sql
//
// --conninfo  load the user functions' volatility from that server (the primary) first;
//             without it only the built-in catalog is used
// --whole     classify all of stdin as one string (default: each non-empty line is one string)
// Output lines: {"sql": "...", "classification": {...}}. Exit status 2 if the catalog load fails.
#include <boost/json.hpp>
#include <iostream>
#include <iterator>
#include <string>
#include <string_view>

#include "config/config.h"
#include "health/function_catalog_loader.h"
#include "routing/classifier.h"
#include "routing/function_catalog.h"

namespace {

using pgrelay::routing::Classification;
using pgrelay::routing::Classifier;

int Usage() {
  std::cerr << "usage: pgrelay_classify [--conninfo CONNINFO] [--whole] [--no-cache] < sql\n";
  return 64;
}

void Print(Classifier& classifier, std::string_view sql, bool cached) {
  const Classification c = cached ? classifier.Classify(sql) : classifier.ClassifyUncached(sql);
  std::cout << "{\"sql\": " << boost::json::serialize(boost::json::string(sql))
            << ", \"classification\": " << pgrelay::routing::ToJson(c) << "}\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::string conninfo;
  bool whole = false;
  bool cached = true;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--conninfo" && i + 1 < argc) {
      conninfo = argv[++i];
    } else if (arg == "--whole") {
      whole = true;
    } else if (arg == "--no-cache") {
      cached = false;
    } else {
      return Usage();
    }
  }
  const pgrelay::config::RoutingConfig routing;
  const pgrelay::routing::FunctionLists lists{routing.side_effect_free_functions,
                                              routing.primary_functions};
  std::shared_ptr<const pgrelay::routing::FunctionCatalog> catalog;
  if (conninfo.empty()) {
    catalog = pgrelay::routing::FunctionCatalog::Builtin(lists);
  } else {
    const pgrelay::health::FunctionCatalogLoad load =
        pgrelay::health::LoadFunctionEntries(conninfo, std::chrono::seconds(10));
    if (!load.ok()) {
      std::cerr << "pgrelay_classify: " << load.error << "\n";
      return 2;
    }
    std::cerr << "pgrelay_classify: loaded " << load.entries.size()
              << " user functions and operators\n";
    catalog = pgrelay::health::MakeFunctionCatalog(load, lists);
  }
  Classifier classifier(catalog, pgrelay::routing::ClassifierOptions::FromConfig(routing));
  if (whole) {
    const std::string sql((std::istreambuf_iterator<char>(std::cin)),
                          std::istreambuf_iterator<char>());
    Print(classifier, sql, cached);
    return 0;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Print(classifier, line, cached);
  }
  return 0;
}
