// Loads the volatility of the cluster's own functions and operators (every schema but pg_catalog
// and information_schema, whose functions are built into routing/builtin_functions.inc) from a
// server, for the classifier's FunctionCatalog. Blocking libpq: call it off the data path (the
// health monitor thread). Stateless functions; thread-safe (each call uses its own connection).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "routing/function_catalog.h"

typedef struct pg_conn PGconn;

namespace pgrelay::health {

struct FunctionCatalogLoad {
  std::vector<routing::FunctionEntry> entries;  // one per function / operator (overloads repeat)
  std::string error;                            // empty on success

  bool ok() const { return error.empty(); }
};

// Reads the entries over `conn`, which must be connected and idle (not in a failed
// transaction). Any server works; the primary's catalog is the one that matters.
FunctionCatalogLoad LoadFunctionEntries(PGconn* conn);

// Connects with `conninfo` (connect_timeout set from `timeout`), reads, disconnects.
FunctionCatalogLoad LoadFunctionEntries(const std::string& conninfo,
                                        std::chrono::milliseconds timeout);

// A catalog of the built-ins, `load`'s entries and the lists.
std::shared_ptr<const routing::FunctionCatalog> MakeFunctionCatalog(
    const FunctionCatalogLoad& load, const routing::FunctionLists& lists);

}  // namespace pgrelay::health
