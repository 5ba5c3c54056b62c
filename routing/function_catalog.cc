#include "routing/function_catalog.h"

#include <algorithm>
#include <unordered_set>
#include <utility>

namespace pgrelay::routing {
namespace {

struct BuiltinEntry {
  const char* schema;
  const char* name;
  char volatility;  // 'i', 's' or 'v'
};

#include "routing/builtin_functions.inc"

struct BuiltinRole {
  std::string_view name;
  FunctionRole role;
};
constexpr BuiltinRole kBuiltinRoles[] = {
    {"set_config", FunctionRole::kSetConfig},
    {"pg_advisory_lock", FunctionRole::kSessionAdvisoryLock},
    {"pg_advisory_lock_shared", FunctionRole::kSessionAdvisoryLock},
    {"pg_try_advisory_lock", FunctionRole::kSessionAdvisoryLock},
    {"pg_try_advisory_lock_shared", FunctionRole::kSessionAdvisoryLock},
    {"pg_advisory_unlock", FunctionRole::kSessionAdvisoryLock},
    {"pg_advisory_unlock_shared", FunctionRole::kSessionAdvisoryLock},
    {"pg_advisory_unlock_all", FunctionRole::kSessionAdvisoryLock},
    {"pg_advisory_xact_lock", FunctionRole::kXactAdvisoryLock},
    {"pg_advisory_xact_lock_shared", FunctionRole::kXactAdvisoryLock},
    {"pg_try_advisory_xact_lock", FunctionRole::kXactAdvisoryLock},
    {"pg_try_advisory_xact_lock_shared", FunctionRole::kXactAdvisoryLock},
    {"pg_notify", FunctionRole::kNotify},
};

// The operators the classifier's pre-check accepts (the parser turns != into <>): comparisons,
// and + - in the SET list of an UPDATE.
constexpr std::string_view kSimpleOperators[] = {"=", "<>", "<", ">", "<=", ">=", "+", "-"};

constexpr std::string_view kPgCatalog = "pg_catalog";

Volatility FromChar(char c) {
  switch (c) {
    case 'i':
      return Volatility::kImmutable;
    case 's':
      return Volatility::kStable;
    default:
      return Volatility::kVolatile;
  }
}

FunctionClass ClassOf(Volatility v) {
  return v == Volatility::kVolatile ? FunctionClass::kVolatile : FunctionClass::kSafe;
}

std::string Qualified(std::string_view schema, std::string_view name) {
  std::string key;
  key.reserve(schema.size() + 1 + name.size());
  key.append(schema).append(1, '.').append(name);
  return key;
}

// One (schema, name) while the catalog is built.
struct Pending {
  std::string schema;
  std::string name;
  FunctionInfo info;
};

}  // namespace

std::shared_ptr<const FunctionCatalog> FunctionCatalog::Builtin(const FunctionLists& lists) {
  return Create({}, lists);
}

std::shared_ptr<const FunctionCatalog> FunctionCatalog::Create(
    std::span<const FunctionEntry> user_entries, const FunctionLists& lists) {
  std::shared_ptr<FunctionCatalog> catalog(new FunctionCatalog());
  catalog->user_entry_count_ = user_entries.size();

  // 1. Qualified functions: built-ins, then the live catalog (max over overloads).
  std::unordered_map<std::string, Pending> qualified;
  qualified.reserve(std::size(kBuiltinFunctions) + user_entries.size());
  auto add = [&](std::string_view schema, std::string_view name, Volatility volatility,
                 bool attribute_callable) {
    auto [it, inserted] = qualified.try_emplace(Qualified(schema, name));
    Pending& p = it->second;
    if (inserted) {
      p.schema = schema;
      p.name = name;
      p.info.function_class = FunctionClass::kSafe;
    }
    p.info.function_class = std::max(p.info.function_class, ClassOf(volatility));
    if (attribute_callable) {
      p.info.attribute_class = std::max(p.info.attribute_class, ClassOf(volatility));
    }
  };
  for (const BuiltinEntry& e : kBuiltinFunctions) {
    add(e.schema, e.name, FromChar(e.volatility), /*attribute_callable=*/false);
  }
  for (const FunctionEntry& e : user_entries) {
    if (!e.is_operator) add(e.schema, e.name, e.volatility, e.attribute_callable);
  }
  for (const BuiltinRole& r : kBuiltinRoles) {
    auto it = qualified.find(Qualified(kPgCatalog, r.name));
    if (it != qualified.end()) it->second.info.role = r.role;
  }

  // 2. The lists. Names that no catalog lists still get an entry, so that the list decides.
  const std::unordered_set<std::string> side_effect_free(lists.side_effect_free.begin(),
                                                         lists.side_effect_free.end());
  const std::unordered_set<std::string> primary(lists.primary.begin(), lists.primary.end());
  auto listed = [](const std::unordered_set<std::string>& set, const std::string& key,
                   const std::string& name) { return set.contains(key) || set.contains(name); };
  for (auto& [key, p] : qualified) {
    if (listed(side_effect_free, key, p.name)) {
      p.info.function_class = FunctionClass::kSafe;
      p.info.attribute_class = FunctionClass::kSafe;
    }
    if (listed(primary, key, p.name)) {
      p.info.function_class = FunctionClass::kPrimary;
      if (p.info.attribute_class != FunctionClass::kSafe) {
        p.info.attribute_class = FunctionClass::kPrimary;
      }
    }
  }
  Map& functions = catalog->functions_;
  functions.reserve(qualified.size() * 2);
  auto list_only = [&](const std::vector<std::string>& names, FunctionClass function_class) {
    for (const std::string& name : names) {
      FunctionInfo info;
      info.function_class = function_class;
      const size_t dot = name.find('.');
      if (dot == std::string::npos) {
        functions.try_emplace(name, info);
      } else if (!qualified.contains(name)) {
        functions.try_emplace(name, info);
        auto [it, inserted] = functions.try_emplace(name.substr(dot + 1), info);
        if (!inserted)
          it->second.function_class = std::max(it->second.function_class, function_class);
      }
    }
  };

  // 3. Qualified keys as they are; unqualified keys the highest class over all schemas (the
  // search path decides which one runs), with the role of the pg_catalog function.
  for (auto& [key, p] : qualified) {
    functions.emplace(key, p.info);
    auto [it, inserted] = functions.try_emplace(p.name, p.info);
    if (inserted) continue;
    FunctionInfo& merged = it->second;
    merged.function_class = std::max(merged.function_class, p.info.function_class);
    merged.attribute_class = std::max(merged.attribute_class, p.info.attribute_class);
    if (p.schema == kPgCatalog) merged.role = p.info.role;
  }
  // Names that only the lists know: a primary-list entry also marks a name the catalog lacks.
  list_only(lists.primary, FunctionClass::kPrimary);
  list_only(lists.side_effect_free, FunctionClass::kSafe);

  // 4. Operators: built-ins and user operators; unqualified keys take the highest class.
  Map& operators = catalog->operators_;
  auto add_operator = [&](std::string_view schema, std::string_view name, Volatility v) {
    FunctionInfo info;
    info.function_class = ClassOf(v);
    for (std::string key : {Qualified(schema, name), std::string(name)}) {
      auto [it, inserted] = operators.try_emplace(std::move(key), info);
      if (!inserted) {
        it->second.function_class = std::max(it->second.function_class, info.function_class);
      }
    }
  };
  for (const BuiltinEntry& e : kBuiltinOperators) {
    add_operator(e.schema, e.name, FromChar(e.volatility));
  }
  for (const FunctionEntry& e : user_entries) {
    if (e.is_operator) add_operator(e.schema, e.name, e.volatility);
  }
  for (std::string_view op : kSimpleOperators) {
    if (catalog->LookupOperator("", op) != FunctionClass::kSafe) {
      catalog->simple_operators_safe_ = false;
    }
  }
  return catalog;
}

const FunctionInfo* FunctionCatalog::Find(const Map& map, std::string_view schema,
                                          std::string_view name) {
  if (schema.empty()) {
    auto it = map.find(name);
    return it == map.end() ? nullptr : &it->second;
  }
  // Build "schema.name" without allocating for ordinary lengths.
  char buffer[256];
  std::string heap;
  std::string_view key;
  const size_t size = schema.size() + 1 + name.size();
  if (size <= sizeof buffer) {
    std::copy(schema.begin(), schema.end(), buffer);
    buffer[schema.size()] = '.';
    std::copy(name.begin(), name.end(), buffer + schema.size() + 1);
    key = std::string_view(buffer, size);
  } else {
    heap = Qualified(schema, name);
    key = heap;
  }
  auto it = map.find(key);
  return it == map.end() ? nullptr : &it->second;
}

FunctionInfo FunctionCatalog::LookupFunction(std::string_view schema, std::string_view name) const {
  const FunctionInfo* info = Find(functions_, schema, name);
  return info != nullptr ? *info : FunctionInfo{};
}

FunctionClass FunctionCatalog::LookupOperator(std::string_view schema,
                                              std::string_view name) const {
  const FunctionInfo* info = Find(operators_, schema, name);
  return info != nullptr ? info->function_class : FunctionClass::kVolatile;
}

FunctionClass FunctionCatalog::LookupAttribute(std::string_view name) const {
  const FunctionInfo* info = Find(functions_, "", name);
  return info != nullptr ? info->attribute_class : FunctionClass::kSafe;
}

}  // namespace pgrelay::routing
