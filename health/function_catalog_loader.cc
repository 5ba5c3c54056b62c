#include "health/function_catalog_loader.h"

#include <libpq-fe.h>

#include <algorithm>
#include <memory>

namespace pgrelay::health {
namespace {

// Functions and operators outside pg_catalog and information_schema. attribute_callable: one
// argument without default whose type a row can have (composite or record-like pseudo-type), so
// that `t.f` calls f(t).
constexpr char kQuery[] = R"sql(
SELECT n.nspname, p.proname, p.provolatile, 'f' AS kind,
       (p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 AND
        (t.typtype = 'c' OR t.typname IN ('record', 'anyelement', 'anynonarray',
                                          'anycompatible', 'anycompatiblenonarray', 'any')))
         AS attribute_callable
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN pg_catalog.pg_type t ON t.oid = p.proargtypes[0]
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT n.nspname, o.oprname, p.provolatile, 'o', false
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
)sql";

std::string ErrorText(const char* what, const char* detail) {
  std::string message = detail != nullptr ? detail : "";
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) {
    message.pop_back();
  }
  return std::string(what) + ": " + message;
}

routing::Volatility VolatilityOf(const char* v) {
  switch (v[0]) {
    case 'i':
      return routing::Volatility::kImmutable;
    case 's':
      return routing::Volatility::kStable;
    default:
      return routing::Volatility::kVolatile;
  }
}

}  // namespace

FunctionCatalogLoad LoadFunctionEntries(PGconn* conn) {
  FunctionCatalogLoad load;
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    load.error = ErrorText("not connected", conn != nullptr ? PQerrorMessage(conn) : nullptr);
    return load;
  }
  std::unique_ptr<PGresult, decltype(&PQclear)> result(
      PQexecParams(conn, kQuery, 0, nullptr, nullptr, nullptr, nullptr, /*resultFormat=*/0),
      &PQclear);
  if (result == nullptr || PQresultStatus(result.get()) != PGRES_TUPLES_OK) {
    load.error =
        ErrorText("loading functions failed",
                  result != nullptr ? PQresultErrorMessage(result.get()) : PQerrorMessage(conn));
    return load;
  }
  const int rows = PQntuples(result.get());
  load.entries.reserve(static_cast<size_t>(rows));
  for (int row = 0; row < rows; ++row) {
    routing::FunctionEntry e;
    e.schema = PQgetvalue(result.get(), row, 0);
    e.name = PQgetvalue(result.get(), row, 1);
    e.volatility = VolatilityOf(PQgetvalue(result.get(), row, 2));
    e.is_operator = PQgetvalue(result.get(), row, 3)[0] == 'o';
    e.attribute_callable = PQgetvalue(result.get(), row, 4)[0] == 't';
    load.entries.push_back(std::move(e));
  }
  return load;
}

FunctionCatalogLoad LoadFunctionEntries(const std::string& conninfo,
                                        std::chrono::milliseconds timeout) {
  const std::string seconds = std::to_string(std::max<int64_t>(
      1, std::chrono::duration_cast<std::chrono::seconds>(timeout + std::chrono::milliseconds(999))
             .count()));
  const char* keys[] = {"dbname", "connect_timeout", "application_name", nullptr};
  const char* values[] = {conninfo.c_str(), seconds.c_str(), "pgrelay-catalog", nullptr};
  // expand_dbname=1: `dbname` is the whole conninfo; keys after it fill in only what it lacks.
  std::unique_ptr<PGconn, decltype(&PQfinish)> conn(PQconnectdbParams(keys, values, 1), &PQfinish);
  if (conn == nullptr || PQstatus(conn.get()) != CONNECTION_OK) {
    FunctionCatalogLoad load;
    load.error = ErrorText("connecting failed",
                           conn != nullptr ? PQerrorMessage(conn.get()) : "out of memory");
    return load;
  }
  return LoadFunctionEntries(conn.get());
}

std::shared_ptr<const routing::FunctionCatalog> MakeFunctionCatalog(
    const FunctionCatalogLoad& load, const routing::FunctionLists& lists) {
  return routing::FunctionCatalog::Create(load.entries, lists);
}

}  // namespace pgrelay::health
