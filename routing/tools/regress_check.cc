// classifier_regress_check: runs the classifier on every statement of PostgreSQL's regression
// suite (src/test/regress/sql/*.sql) and checks it against an independent oracle of "this
// statement writes". Fails (exit 1) if the classifier ever says "replica" for a statement the
// oracle says writes. Driven by scripts/check_regress_corpus.sh; see docs/classifier.md.
//
//   classifier_regress_check [--volatile-list FILE] [--show-conservative N] FILE.sql...
//
// --volatile-list  names of the server's volatile functions (one per line), to widen the oracle
// The oracle parses each statement again with libpg_query on its own and says "writes" when:
//  - the statement is not one of the kinds that cannot write (SELECT, VALUES, SHOW, EXPLAIN
//    without ANALYZE, COPY TO STDOUT, FETCH, SET/RESET, BEGIN/COMMIT/..., DISCARD, ...), or
//  - its tree holds an INSERT/UPDATE/DELETE/MERGE node, a locking clause or an INTO clause, or
//  - it calls a function from a fixed list of writers (nextval, advisory locks, ...), a function
//    of --volatile-list, or a function that the suite itself creates without IMMUTABLE/STABLE.
#include <pg_query.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "routing/classifier.h"
#include "routing/function_catalog.h"
#include "routing/sql_scan.h"

namespace {

namespace json = boost::json;
using pgrelay::routing::Classification;
using pgrelay::routing::Classifier;
using pgrelay::routing::Flag;
using pgrelay::routing::Target;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// `sql` on one line, whitespace runs as one space, for the report.
std::string OneLine(std::string_view sql) {
  std::string out;
  for (char c : sql) {
    const bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (space && (out.empty() || out.back() == ' ')) continue;
    out += space ? ' ' : c;
  }
  if (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Drops psql meta-commands (lines starting with a backslash, and \g... at the end of a line,
// which also ends the statement) and COPY ... FROM stdin data up to "\.".
std::string StripPsql(const std::string& text) {
  std::istringstream in(text);
  std::string out;
  std::string line;
  bool copy_data = false;
  while (std::getline(in, line)) {
    if (copy_data) {
      if (line.rfind("\\.", 0) == 0) copy_data = false;
      continue;
    }
    const size_t first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line[first] == '\\') {
      out += "\n";
      continue;
    }
    for (std::string_view meta : {" \\gset", " \\gexec", " \\gdesc", " \\gx", " \\g",
                                  " \\crosstabview", "\\gset", "\\gexec"}) {
      const size_t pos = line.rfind(meta);
      if (pos != std::string::npos && line.find('\'', pos) == std::string::npos) {
        line = line.substr(0, pos) + ";";
        break;
      }
    }
    const std::string lower = Lower(line);
    if (lower.find("from stdin") != std::string::npos &&
        lower.find_last_not_of(" \t") != std::string::npos &&
        lower[lower.find_last_not_of(" \t")] == ';' && lower.find("copy") != std::string::npos) {
      copy_data = true;
    }
    out += line;
    out += "\n";
  }
  return out;
}

std::vector<std::string> Split(const std::string& text) {
  std::vector<std::string> out;
  PgQuerySplitResult result = pg_query_split_with_scanner(text.c_str());
  if (result.error == nullptr) {
    for (int i = 0; i < result.n_stmts; ++i) {
      const PgQuerySplitStmt* s = result.stmts[i];
      out.push_back(
          text.substr(static_cast<size_t>(s->stmt_location), static_cast<size_t>(s->stmt_len)));
    }
  }
  pg_query_free_split_result(result);
  return out;
}

// --- The oracle ----------------------------------------------------------------------------------

const std::set<std::string, std::less<>> kWriterFunctions = {
    "nextval",
    "setval",
    "currval",
    "lastval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "txid_current",
    "pg_current_xact_id",
    "set_config",
    "pg_notify",
    "lo_create",
    "lo_creat",
    "lo_unlink",
    "lo_import",
    "lo_put",
    "lo_from_bytea",
    "pg_export_snapshot",
    "pg_create_restore_point",
    "pg_switch_wal",
    "pg_logical_emit_message",
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_drop_replication_slot",
    "pg_stat_reset",
    "pg_reload_conf",
    "pg_terminate_backend",
    "pg_cancel_backend",
};

// Statement kinds that cannot write by themselves.
const std::set<std::string, std::less<>> kReadKinds = {
    "SelectStmt",        "VariableShowStmt", "VariableSetStmt", "DeallocateStmt",
    "DiscardStmt",       "ClosePortalStmt",  "FetchStmt",       "LoadStmt",
    "DeclareCursorStmt", "PrepareStmt",      "ExecuteStmt",     "UnlistenStmt",
};

struct Oracle {
  std::set<std::string, std::less<>> volatile_functions;  // --volatile-list and the suite's own

  // True if `sql` (one statement) writes; nullopt if it does not parse.
  std::optional<bool> Writes(const std::string& sql, std::string* why) const {
    PgQueryParseResult result = pg_query_parse(sql.c_str());
    if (result.error != nullptr) {
      pg_query_free_parse_result(result);
      return std::nullopt;
    }
    const std::string tree = result.parse_tree;
    pg_query_free_parse_result(result);
    boost::system::error_code ec;
    json::parse_options options;
    options.max_depth = 100000;
    const json::value v = json::parse(tree, ec, {}, options);
    if (ec) return std::nullopt;
    const json::array& stmts = v.at("stmts").as_array();
    for (const json::value& raw : stmts) {
      const json::object& stmt = raw.at("stmt").as_object();
      const std::string kind(stmt.begin()->key());
      const json::object& body = stmt.begin()->value().as_object();
      if (StatementWrites(kind, body, why)) return true;
    }
    return false;
  }

  bool StatementWrites(const std::string& kind, const json::object& body, std::string* why) const {
    if (kind == "ExplainStmt") {
      bool analyze = false;
      if (const json::value* options = body.if_contains("options")) {
        for (const json::value& o : options->as_array()) {
          const json::object& def = o.at("DefElem").as_object();
          if (def.at("defname").as_string() != "analyze") continue;
          const json::value* arg = def.if_contains("arg");
          analyze = true;
          if (arg != nullptr && arg->as_object().contains("String")) {
            const std::string s = Lower(std::string(arg->at("String").at("sval").as_string()));
            analyze = !(s == "false" || s == "off" || s == "0" || s == "no");
          }
        }
      }
      if (!analyze) return false;
      const json::object& q = body.at("query").as_object();
      return StatementWrites(std::string(q.begin()->key()), q.begin()->value().as_object(), why);
    }
    if (kind == "TransactionStmt") {
      const std::string k(body.at("kind").as_string());
      if (k == "TRANS_STMT_PREPARE" || k == "TRANS_STMT_COMMIT_PREPARED" ||
          k == "TRANS_STMT_ROLLBACK_PREPARED") {
        *why = k;
        return true;
      }
      return false;
    }
    if (kind == "CopyStmt") {
      if (body.contains("is_from") || body.contains("filename")) {
        *why = "COPY FROM / file";
        return true;
      }
      return TreeWrites(body, why);
    }
    if (kind == "PrepareStmt") return false;  // preparing runs nothing
    if (!kReadKinds.contains(kind)) {
      *why = kind;
      return true;
    }
    return TreeWrites(body, why);
  }

  bool TreeWrites(const json::value& v, std::string* why) const {
    if (const json::object* o = v.if_object()) {
      for (const auto& kv : *o) {
        const std::string_view key = kv.key();
        if (key == "InsertStmt" || key == "UpdateStmt" || key == "DeleteStmt" ||
            key == "MergeStmt" || key == "lockingClause" || key == "intoClause") {
          *why = std::string(key);
          return true;
        }
        if (key == "FuncCall" || key == "funccall") {
          const json::object& call = kv.value().as_object();
          if (const json::value* names = call.if_contains("funcname")) {
            const json::value& last = names->as_array().back();
            if (const json::value* s = last.as_object().if_contains("String")) {
              const std::string name(s->at("sval").as_string());
              if (kWriterFunctions.contains(name) || volatile_functions.contains(name)) {
                *why = "calls " + name;
                return true;
              }
            }
          }
        }
        if (TreeWrites(kv.value(), why)) return true;
      }
    } else if (const json::array* a = v.if_array()) {
      for (const json::value& e : *a) {
        if (TreeWrites(e, why)) return true;
      }
    }
    return false;
  }

  // Functions the suite creates: volatile unless declared IMMUTABLE or STABLE.
  void LearnCreatedFunction(const std::string& sql) {
    PgQueryParseResult result = pg_query_parse(sql.c_str());
    if (result.error == nullptr) {
      boost::system::error_code ec;
      const json::value v = json::parse(result.parse_tree, ec);
      if (!ec) {
        for (const json::value& raw : v.at("stmts").as_array()) {
          const json::object& stmt = raw.at("stmt").as_object();
          if (stmt.begin()->key() != "CreateFunctionStmt") continue;
          const json::object& body = stmt.begin()->value().as_object();
          std::string volatility = "volatile";
          if (const json::value* options = body.if_contains("options")) {
            for (const json::value& o : options->as_array()) {
              const json::object& def = o.at("DefElem").as_object();
              if (def.at("defname").as_string() == "volatility") {
                volatility = std::string(def.at("arg").at("String").at("sval").as_string());
              }
            }
          }
          const json::array& names = body.at("funcname").as_array();
          const std::string name(names.back().at("String").at("sval").as_string());
          if (volatility == "volatile") volatile_functions.insert(name);
        }
      }
    }
    pg_query_free_parse_result(result);
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  std::string volatile_list;
  int show_conservative = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--volatile-list" && i + 1 < argc) {
      volatile_list = argv[++i];
    } else if (arg == "--show-conservative" && i + 1 < argc) {
      show_conservative = std::atoi(argv[++i]);
    } else {
      files.emplace_back(arg);
    }
  }
  if (files.empty()) {
    std::cerr << "usage: classifier_regress_check [--volatile-list FILE] "
                 "[--show-conservative N] FILE.sql...\n";
    return 64;
  }

  Oracle oracle;
  if (!volatile_list.empty()) {
    std::ifstream in(volatile_list);
    for (std::string name; std::getline(in, name);) {
      if (!name.empty()) oracle.volatile_functions.insert(name);
    }
  }
  const pgrelay::config::RoutingConfig routing;

  std::vector<std::pair<std::string, std::vector<std::string>>> corpus;
  for (const std::string& file : files) {
    corpus.emplace_back(file, Split(StripPsql(ReadFile(file))));
    for (const std::string& sql : corpus.back().second) oracle.LearnCreatedFunction(sql);
  }
  // The built-ins that the default lists call side-effect-free may go to a replica by design.
  for (const std::string& name : routing.side_effect_free_functions) {
    const size_t dot = name.find('.');
    oracle.volatile_functions.erase(dot == std::string::npos ? name : name.substr(dot + 1));
  }

  const pgrelay::routing::FunctionLists lists{routing.side_effect_free_functions,
                                              routing.primary_functions};
  const auto catalog = pgrelay::routing::FunctionCatalog::Builtin(lists);
  Classifier classifier(catalog, pgrelay::routing::ClassifierOptions::FromConfig(routing));

  size_t statements = 0, parse_errors = 0, reads = 0, writes = 0, oracle_writes = 0;
  size_t false_reads = 0, conservative = 0, cache_mismatches = 0, precheck_mismatches = 0;
  std::map<std::string, size_t> conservative_reasons;
  std::vector<std::string> conservative_examples;
  for (const auto& [file, stmts] : corpus) {
    for (const std::string& sql : stmts) {
      ++statements;
      const Classification c = classifier.ClassifyUncached(sql);
      const Classification cached = classifier.Classify(sql);
      if (!(cached == c) && !cached.Has(Flag::kTooDeep)) {
        ++cache_mismatches;
        std::cout << "CACHE MISMATCH " << file << ": " << OneLine(sql) << "\n";
      }
      Classification pre;
      if (pgrelay::routing::PrecheckSimple(sql, catalog->simple_operators_safe(), &pre) &&
          pre.target != c.target) {
        ++precheck_mismatches;
        std::cout << "PRECHECK MISMATCH " << file << ": " << OneLine(sql) << "\n";
      }
      (c.target == Target::kPrimary ? writes : reads)++;
      std::string why;
      const std::optional<bool> oracle_writes_it = oracle.Writes(sql, &why);
      if (!oracle_writes_it) {
        ++parse_errors;
        if (c.target != Target::kPrimary) {
          ++false_reads;
          std::cout << "FALSE READ (unparseable) " << file << ": " << OneLine(sql) << "\n";
        }
        continue;
      }
      if (*oracle_writes_it) {
        ++oracle_writes;
        if (c.target != Target::kPrimary) {
          ++false_reads;
          std::cout << "FALSE READ (" << why << ") " << file << ": " << OneLine(sql) << "\n  "
                    << pgrelay::routing::ToJson(c) << "\n";
        }
      } else if (c.target == Target::kPrimary) {
        ++conservative;
        std::string reason = pgrelay::routing::FlagsToString(
            c.flags &
            (Flag::kWrite | Flag::kVolatileFunction | Flag::kPrimaryFunction | Flag::kExecute |
             Flag::kTempReference | Flag::kSetConfigSession | Flag::kTooDeep));
        ++conservative_reasons[reason];
        if (static_cast<int>(conservative_examples.size()) < show_conservative) {
          conservative_examples.push_back("[" + reason + "] " + OneLine(sql));
        }
      }
    }
  }
  for (const std::string& e : conservative_examples) std::cout << "CONSERVATIVE " << e << "\n";
  std::cout << "files: " << corpus.size() << "\nstatements: " << statements
            << "\nunparseable (by design of the suite or psql syntax): " << parse_errors
            << "\nclassified replica: " << reads << "\nclassified primary: " << writes
            << "\noracle says writes: " << oracle_writes
            << "\nprimary although the oracle says no write: " << conservative << "\n";
  for (const auto& [reason, count] : conservative_reasons) {
    std::cout << "  " << (reason.empty() ? "(none)" : reason) << ": " << count << "\n";
  }
  std::cout << "cache mismatches: " << cache_mismatches
            << "\npre-check mismatches: " << precheck_mismatches
            << "\nFALSE READS (replica for a write): " << false_reads << "\n";
  return false_reads == 0 && cache_mismatches == 0 && precheck_mismatches == 0 ? 0 : 1;
}
