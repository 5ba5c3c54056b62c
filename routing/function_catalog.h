// FunctionCatalog: how the classifier treats each function and operator name: PostgreSQL's
// built-ins (routing/builtin_functions.inc), the cluster's user functions (loaded by
// health/function_catalog_loader.h) and the configured function lists. Immutable; share freely
// as std::shared_ptr<const FunctionCatalog>.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace pgrelay::routing {

// pg_proc.provolatile.
enum class Volatility : uint8_t { kImmutable, kStable, kVolatile };

// One function or operator of the live catalog. Overloads may repeat a name.
struct FunctionEntry {
  std::string schema;
  std::string name;
  Volatility volatility = Volatility::kVolatile;
  bool is_operator = false;
  // Callable with one row argument, so that `t.name` / `(t).name` calls it (attribute notation).
  bool attribute_callable = false;
};

// What calling a function means for routing. Ordered: the higher class wins.
enum class FunctionClass : uint8_t {
  kSafe,      // immutable, stable, or a volatile function on the side-effect-free list
  kVolatile,  // volatile (or unknown): may write, so the statement goes to the primary
  kPrimary,   // on the primary-functions list: always the primary, whatever the hints say
};

// Built-in functions the classifier knows more about than their volatility.
enum class FunctionRole : uint8_t {
  kNone,
  kSetConfig,            // set_config(name, value, is_local)
  kSessionAdvisoryLock,  // pg_advisory_lock / _shared / try_ / unlock / unlock_all
  kXactAdvisoryLock,     // pg_advisory_xact_lock / _shared / try_
  kNotify,               // pg_notify
};

struct FunctionInfo {
  FunctionClass function_class = FunctionClass::kVolatile;
  FunctionRole role = FunctionRole::kNone;
  // Class when called with attribute notation (t.f); kSafe if no overload can be called so.
  FunctionClass attribute_class = FunctionClass::kSafe;
};

// The configured lists (config::RoutingConfig): "name" applies to every schema, "schema.name"
// to that schema only.
struct FunctionLists {
  std::vector<std::string> side_effect_free;
  std::vector<std::string> primary;
};

class FunctionCatalog {
 public:
  // Built-ins + `user_entries` + the lists. The lists win over volatility; primary wins over
  // side-effect-free. An unqualified name gets the highest class over all schemas.
  static std::shared_ptr<const FunctionCatalog> Create(std::span<const FunctionEntry> user_entries,
                                                       const FunctionLists& lists);
  // Built-ins and the lists only (before the live catalog is first loaded).
  static std::shared_ptr<const FunctionCatalog> Builtin(const FunctionLists& lists);

  // A function call `schema.name(...)` (schema empty if unqualified). Unknown -> kVolatile.
  FunctionInfo LookupFunction(std::string_view schema, std::string_view name) const;
  // An operator `a OP b` / OPERATOR(schema.OP). Unknown -> kVolatile.
  FunctionClass LookupOperator(std::string_view schema, std::string_view name) const;
  // Attribute notation `x.name`: the class of the functions a row argument can call so;
  // kSafe if `name` is no such function (then it is a column).
  FunctionClass LookupAttribute(std::string_view name) const;

  // True if the operators the classifier's pre-check accepts (= <> != < > <= >=) are all safe.
  bool simple_operators_safe() const { return simple_operators_safe_; }
  size_t function_count() const { return functions_.size(); }
  size_t user_entry_count() const { return user_entry_count_; }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Map = std::unordered_map<std::string, FunctionInfo, Hash, std::equal_to<>>;

  FunctionCatalog() = default;
  static const FunctionInfo* Find(const Map& map, std::string_view schema, std::string_view name);

  Map functions_;  // "name" and "schema.name"
  Map operators_;  // "op" and "schema.op"; only function_class is used
  bool simple_operators_safe_ = true;
  size_t user_entry_count_ = 0;
};

}  // namespace pgrelay::routing
