#include "routing/classifier.h"

#include <pg_query.h>

#include <algorithm>
#include <boost/json.hpp>
#include <boost/regex.hpp>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "routing/sql_scan.h"

namespace pgrelay::routing {
namespace json = boost::json;

namespace {

constexpr uint64_t F(Flag f) { return static_cast<uint64_t>(f); }

// Flags that send a string to the primary, and those of them that no replica hint overrides.
constexpr uint64_t kPrimaryMask = Flag::kWrite | Flag::kVolatileFunction | Flag::kPrimaryFunction |
                                  Flag::kParseError | Flag::kExecute | Flag::kTooDeep |
                                  Flag::kTempReference | Flag::kSetConfigSession;
constexpr uint64_t kHardPrimaryMask =
    Flag::kWrite | Flag::kPrimaryFunction | Flag::kTempReference | Flag::kSetConfigSession;
// What a statement that does not run its expressions now (CREATE VIEW, EXPLAIN, PREPARE, ...)
// keeps of the flags found in its tree.
constexpr uint64_t kNotExecutedMask =
    Flag::kWrite | Flag::kCreateTemp | Flag::kTempReference | Flag::kFunctionsChanged;

constexpr int kCursorOptHold = 0x0020;    // CURSOR_OPT_HOLD in PostgreSQL's parsenodes.h
constexpr size_t kMaxJsonDepth = 100000;  // the walk is iterative; this only bounds the parser

// ---------------------------------------------------------------------------------------------
// JSON helpers for libpg_query's output: a node is {"TypeName": {fields}}; typed struct fields
// (e.g. InsertStmt.relation) are the bare {fields}; default values are omitted.

std::string_view View(const json::string& s) { return {s.data(), s.size()}; }

std::string_view StringField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return {};
  const json::string* s = v->if_string();
  return s != nullptr ? View(*s) : std::string_view();
}

int64_t IntField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return 0;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64()) return static_cast<int64_t>(v->get_uint64());
  return 0;
}

bool BoolField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v != nullptr && v->is_bool() && v->get_bool();
}

const json::array* ArrayField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v != nullptr ? v->if_array() : nullptr;
}

const json::object* ObjectField(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v != nullptr ? v->if_object() : nullptr;
}

// A wrapped node: its type name and body; false if `v` is not one.
bool Unwrap(const json::value& v, std::string_view* type, const json::object** body) {
  const json::object* o = v.if_object();
  if (o == nullptr || o->size() != 1) return false;
  const auto& kv = *o->begin();
  const json::object* b = kv.value().if_object();
  if (b == nullptr) return false;
  *type = kv.key();
  *body = b;
  return true;
}

// The text of a String node ({"String": {"sval": "x"}}); nullopt if `v` is no String node.
std::optional<std::string_view> StringNode(const json::value& v) {
  std::string_view type;
  const json::object* body;
  if (!Unwrap(v, &type, &body) || type != "String") return std::nullopt;
  return StringField(*body, "sval");
}

// A constant: {"A_Const": {"sval": {"sval": "x"}}} etc.
struct Constant {
  enum Kind { kNone, kString, kInteger, kFloat, kBoolean, kNull } kind = kNone;
  std::string_view text;  // kString, kFloat, kBitString
  int64_t integer = 0;
  bool boolean = false;
};

Constant ConstantOf(const json::value& v) {
  Constant c;
  std::string_view type;
  const json::object* body;
  if (!Unwrap(v, &type, &body) || type != "A_Const") return c;
  if (BoolField(*body, "isnull")) {
    c.kind = Constant::kNull;
  } else if (const json::object* s = ObjectField(*body, "sval")) {
    c.kind = Constant::kString;
    c.text = StringField(*s, "sval");
  } else if (const json::object* i = ObjectField(*body, "ival")) {
    c.kind = Constant::kInteger;
    c.integer = IntField(*i, "ival");
  } else if (const json::object* f = ObjectField(*body, "fval")) {
    c.kind = Constant::kFloat;
    c.text = StringField(*f, "fval");
  } else if (const json::object* b = ObjectField(*body, "boolval")) {
    c.kind = Constant::kBoolean;
    c.boolean = BoolField(*b, "boolval");
  } else if (const json::object* bs = ObjectField(*body, "bsval")) {
    c.kind = Constant::kString;
    c.text = StringField(*bs, "bsval");
  }
  return c;
}

// PostgreSQL's parse_bool: true/false/yes/no/on/off/1/0 and unique prefixes of the words.
std::optional<bool> ParseBool(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  if (s.empty()) return std::nullopt;
  auto prefix_of = [&](std::string_view word) {
    return s.size() <= word.size() && EqualsIgnoreCase(s, word.substr(0, s.size()));
  };
  if (prefix_of("true") || prefix_of("yes") || EqualsIgnoreCase(s, "on") || s == "1") return true;
  if (prefix_of("false") || (s.size() >= 1 && prefix_of("no")) ||
      (s.size() >= 2 && prefix_of("off")) || s == "0") {
    return false;
  }
  return std::nullopt;
}

// A constant boolean argument: true, false, 'on', 'false'::boolean, 1::bool; nullopt otherwise.
std::optional<bool> BoolArgument(const json::value& v) {
  std::string_view type;
  const json::object* body;
  if (!Unwrap(v, &type, &body)) return std::nullopt;
  if (type == "TypeCast") {
    const json::value* arg = body->if_contains("arg");
    return arg != nullptr ? BoolArgument(*arg) : std::nullopt;
  }
  const Constant c = ConstantOf(v);
  switch (c.kind) {
    case Constant::kBoolean:
      return c.boolean;
    case Constant::kInteger:
      return c.integer != 0;
    case Constant::kString:
      return ParseBool(c.text);
    default:
      return std::nullopt;
  }
}

// `value` as a SQL literal: 'it''s'.
std::string QuoteLiteral(std::string_view value) {
  std::string out;
  out.reserve(value.size() + 2);
  out += '\'';
  for (char c : value) {
    out += c;
    if (c == '\'') out += '\'';
  }
  out += '\'';
  return out;
}

// SET's arguments as SQL text ('x', 42, a, b); empty if one is not a plain constant.
std::string SetValueText(const json::array* args) {
  std::string out;
  if (args == nullptr) return out;
  for (const json::value& arg : *args) {
    const Constant c = ConstantOf(arg);
    std::string item;
    switch (c.kind) {
      case Constant::kString:
        item = QuoteLiteral(c.text);
        break;
      case Constant::kInteger:
        item = std::to_string(c.integer);
        break;
      case Constant::kFloat:
        item = std::string(c.text);
        break;
      case Constant::kBoolean:
        item = c.boolean ? "true" : "false";
        break;
      default:
        return {};
    }
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

bool IsTempSchema(std::string_view schema) { return schema.starts_with("pg_temp"); }

bool IsOperatorName(std::string_view name) {
  return !name.empty() && std::strchr("+-*/<>=~!@#%^&|`?", name.front()) != nullptr;
}

bool OneOf(std::string_view s, std::initializer_list<std::string_view> values) {
  return std::find(values.begin(), values.end(), s) != values.end();
}

// Object types whose DDL may create, alter or drop functions or operators.
bool ChangesFunctions(std::string_view object_type) {
  return OneOf(object_type,
               {"OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE",
                "OBJECT_OPERATOR", "OBJECT_EXTENSION", "OBJECT_SCHEMA"});
}

enum class NodeKind : uint8_t {
  kOther,
  kLeaf,  // String, A_Const, ParamRef, ... : nothing inside to look at
  kFuncCall,
  kAExpr,
  kSubLink,
  kColumnRef,
  kAIndirection,
  kWriteStmt,  // InsertStmt, UpdateStmt, DeleteStmt, MergeStmt
};

NodeKind KindOf(std::string_view type) {
  switch (type.size()) {
    case 6:
      if (type == "String" || type == "A_Star") return NodeKind::kLeaf;
      if (type == "A_Expr") return NodeKind::kAExpr;
      break;
    case 7:
      if (type == "A_Const" || type == "Integer" || type == "Boolean") return NodeKind::kLeaf;
      if (type == "SubLink") return NodeKind::kSubLink;
      break;
    case 8:
      if (type == "FuncCall") return NodeKind::kFuncCall;
      if (type == "ParamRef") return NodeKind::kLeaf;
      break;
    case 9:
      if (type == "ColumnRef") return NodeKind::kColumnRef;
      if (type == "DeleteStmt") return NodeKind::kWriteStmt;
      break;
    case 10:
      if (type == "InsertStmt" || type == "UpdateStmt") return NodeKind::kWriteStmt;
      break;
    case 13:
      if (type == "A_Indirection") return NodeKind::kAIndirection;
      break;
    default:
      break;
  }
  if (type == "DeleteStmt" || type == "MergeStmt") return NodeKind::kWriteStmt;
  if (type == "Float") return NodeKind::kLeaf;
  return NodeKind::kOther;
}

// Transaction options of BEGIN / START TRANSACTION / SET TRANSACTION / SET SESSION
// CHARACTERISTICS: a list of DefElem transaction_isolation / _read_only / _deferrable.
struct TxnOptions {
  TxnAccess access = TxnAccess::kDefault;
  Isolation isolation = Isolation::kDefault;
  Deferrable deferrable = Deferrable::kDefault;
};

std::string_view IsolationName(Isolation i) {
  switch (i) {
    case Isolation::kReadUncommitted:
      return "read uncommitted";
    case Isolation::kReadCommitted:
      return "read committed";
    case Isolation::kRepeatableRead:
      return "repeatable read";
    case Isolation::kSerializable:
      return "serializable";
    case Isolation::kDefault:
      break;
  }
  return "default";
}

TxnOptions ParseTxnOptions(const json::array* options) {
  TxnOptions out;
  if (options == nullptr) return out;
  for (const json::value& option : *options) {
    std::string_view type;
    const json::object* body;
    if (!Unwrap(option, &type, &body) || type != "DefElem") continue;
    const std::string_view name = StringField(*body, "defname");
    const json::value* arg = body->if_contains("arg");
    const Constant c = arg != nullptr ? ConstantOf(*arg) : Constant{};
    if (name == "transaction_isolation") {
      if (c.text == "serializable") {
        out.isolation = Isolation::kSerializable;
      } else if (c.text == "repeatable read") {
        out.isolation = Isolation::kRepeatableRead;
      } else if (c.text == "read committed") {
        out.isolation = Isolation::kReadCommitted;
      } else if (c.text == "read uncommitted") {
        out.isolation = Isolation::kReadUncommitted;
      }
    } else if (name == "transaction_read_only") {
      out.access = c.integer != 0 ? TxnAccess::kReadOnly : TxnAccess::kReadWrite;
    } else if (name == "transaction_deferrable") {
      out.deferrable = c.integer != 0 ? Deferrable::kDeferrable : Deferrable::kNotDeferrable;
    }
  }
  return out;
}

// One pending object or array of the iterative walk.
struct Frame {
  const json::object* object;
  const json::array* array;
};

// ---------------------------------------------------------------------------------------------
// Analyzer: walks the parse tree of one string and accumulates its classification.

class Analyzer {
 public:
  Analyzer(const FunctionCatalog& catalog, std::string_view sql, std::vector<Frame>* stack)
      : catalog_(catalog), sql_(sql), stack_(*stack) {}

  // One element of the "stmts" array: {"stmt": {...}, "stmt_location": n, "stmt_len": n}.
  void RawStatement(const json::object& raw) {
    ++statements_;
    const json::value* stmt = raw.if_contains("stmt");
    const size_t location =
        static_cast<size_t>(std::max<int64_t>(0, IntField(raw, "stmt_location")));
    const size_t length = static_cast<size_t>(std::max<int64_t>(0, IntField(raw, "stmt_len")));
    const std::string_view text =
        location <= sql_.size()
            ? sql_.substr(location, length == 0 ? std::string_view::npos : length)
            : std::string_view();
    std::string_view type;
    const json::object* body;
    if (stmt == nullptr || !Unwrap(*stmt, &type, &body)) {
      flags_ |= F(Flag::kWrite);  // an unexpected shape: be safe
      return;
    }
    flags_ |= Statement(type, *body, text);
  }

  Classification Finish() {
    Classification c;
    c.flags = flags_;
    if (statements_ == 0) c.Set(Flag::kEmpty);
    if (statements_ > 1) c.Set(Flag::kMultiStatement);
    c.statement_count = static_cast<uint16_t>(std::min<size_t>(statements_, UINT16_MAX));
    c.txn = txn_;
    c.txn_access = txn_options_.access;
    c.isolation = txn_options_.isolation;
    c.deferrable = txn_options_.deferrable;
    c.target = c.HasAny(kPrimaryMask) ? Target::kPrimary : Target::kReplica;
    if (!items_.empty()) {
      c.items = std::make_shared<const std::vector<SessionItem>>(std::move(items_));
    }
    return c;
  }

 private:
  // The flags of one statement (and its SessionItems, appended to items_).
  uint64_t Statement(std::string_view type, const json::object& body, std::string_view text) {
    switch (type.front()) {
      case 'S':
        if (type == "SelectStmt") return Walk(body, text);
        break;
      case 'I':
      case 'U':
      case 'D':
      case 'M':
        if (type == "InsertStmt" || type == "UpdateStmt" || type == "DeleteStmt" ||
            type == "MergeStmt") {
          return F(Flag::kWrite) | Walk(body, text);
        }
        break;
      default:
        break;
    }
    if (type == "TransactionStmt") return Transaction(body);
    if (type == "VariableSetStmt") return VariableSet(body, text);
    if (type == "VariableShowStmt") return 0;
    if (type == "ExplainStmt") return Explain(body, text);
    if (type == "CopyStmt") {
      uint64_t flags = Walk(body, text);
      if (BoolField(body, "is_from")) flags |= F(Flag::kWrite);
      // COPY ... TO 'file' / PROGRAM writes on the server it runs on: the primary.
      if (BoolField(body, "is_program") || body.contains("filename")) flags |= F(Flag::kWrite);
      return flags;
    }
    if (type == "CreateTableAsStmt") return F(Flag::kWrite) | Walk(body, text);
    if (type == "DeclareCursorStmt") {
      const bool hold = (IntField(body, "options") & kCursorOptHold) != 0;
      const Flag kind = hold ? Flag::kDeclareCursorWithHold : Flag::kDeclareCursor;
      AddItem(kind, StringField(body, "portalname"), {}, text);
      return F(kind) | Walk(body, text);
    }
    if (type == "FetchStmt") {
      AddItem(Flag::kFetchCursor, StringField(body, "portalname"), {}, text);
      return F(Flag::kFetchCursor);
    }
    if (type == "ClosePortalStmt") {
      const std::string_view name = StringField(body, "portalname");
      const Flag kind = name.empty() ? Flag::kCloseAllCursors : Flag::kCloseCursor;
      AddItem(kind, name, {}, text);
      return F(kind);
    }
    if (type == "PrepareStmt") return Prepare(body, text);
    if (type == "ExecuteStmt") {
      AddItem(Flag::kExecute, StringField(body, "name"), {}, text);
      return F(Flag::kExecute) | Walk(body, text);
    }
    if (type == "DeallocateStmt") {
      const std::string_view name = StringField(body, "name");
      const Flag kind = name.empty() ? Flag::kDeallocateAll : Flag::kDeallocate;
      AddItem(kind, name, {}, text);
      return F(kind);
    }
    if (type == "DiscardStmt") {
      const std::string_view target = StringField(body, "target");
      if (target == "DISCARD_PLANS") return F(Flag::kDiscardPlans);
      if (target == "DISCARD_SEQUENCES") return F(Flag::kDiscardSequences);
      if (target == "DISCARD_TEMP") return F(Flag::kDiscardTemp);
      return F(Flag::kDiscardAll);
    }
    if (type == "LoadStmt") return F(Flag::kLoad);
    // LISTEN fails on a standby; UNLISTEN and NOTIFY belong where LISTEN ran.
    if (type == "ListenStmt") {
      AddItem(Flag::kListen, StringField(body, "conditionname"), {}, text);
      return Flag::kListen | Flag::kWrite;
    }
    if (type == "UnlistenStmt") {
      const std::string_view name = StringField(body, "conditionname");
      const Flag kind = name.empty() ? Flag::kUnlistenAll : Flag::kUnlisten;
      AddItem(kind, name, {}, text);
      return kind | Flag::kWrite;
    }
    if (type == "NotifyStmt") {
      AddItem(Flag::kNotify, StringField(body, "conditionname"), StringField(body, "payload"),
              text);
      return Flag::kNotify | Flag::kWrite;
    }
    if (type == "CallStmt") return F(Flag::kWrite) | Walk(body, text);
    // Everything else is DDL or maintenance (VACUUM, ANALYZE, LOCK, CHECKPOINT, REFRESH, ...):
    // the primary. Expressions inside DDL do not run now, so their call flags are dropped.
    uint64_t flags = F(Flag::kWrite) | (WalkNotExecuted(body, text) & kNotExecutedMask);
    if (FunctionDdl(type, body)) flags |= F(Flag::kFunctionsChanged);
    return flags;
  }

  static bool FunctionDdl(std::string_view type, const json::object& body) {
    if (OneOf(type, {"CreateFunctionStmt", "AlterFunctionStmt", "DoStmt", "CreateExtensionStmt",
                     "AlterExtensionStmt", "AlterExtensionContentsStmt", "DropOwnedStmt",
                     "AlterOperatorStmt", "CreateTransformStmt", "CreateCastStmt"})) {
      return true;
    }
    if (type == "DefineStmt") {
      return OneOf(StringField(body, "kind"), {"OBJECT_OPERATOR", "OBJECT_AGGREGATE"});
    }
    if (type == "DropStmt") return ChangesFunctions(StringField(body, "removeType"));
    if (type == "RenameStmt") return ChangesFunctions(StringField(body, "renameType"));
    if (type == "AlterObjectSchemaStmt") return ChangesFunctions(StringField(body, "objectType"));
    return false;
  }

  uint64_t Transaction(const json::object& body) {
    const std::string_view kind = StringField(body, "kind");
    TxnKind txn = TxnKind::kNone;
    uint64_t flags = 0;
    if (kind == "TRANS_STMT_BEGIN" || kind == "TRANS_STMT_START") {
      txn = TxnKind::kBegin;
    } else if (kind == "TRANS_STMT_COMMIT") {
      txn = TxnKind::kCommit;
    } else if (kind == "TRANS_STMT_ROLLBACK") {
      txn = TxnKind::kRollback;
    } else if (kind == "TRANS_STMT_SAVEPOINT") {
      txn = TxnKind::kSavepoint;
    } else if (kind == "TRANS_STMT_RELEASE") {
      txn = TxnKind::kRelease;
    } else if (kind == "TRANS_STMT_ROLLBACK_TO") {
      txn = TxnKind::kRollbackTo;
    } else if (kind == "TRANS_STMT_PREPARE") {
      txn = TxnKind::kPrepareTransaction;
      flags |= F(Flag::kWrite);
    } else if (kind == "TRANS_STMT_COMMIT_PREPARED") {
      txn = TxnKind::kCommitPrepared;
      flags |= F(Flag::kWrite);
    } else if (kind == "TRANS_STMT_ROLLBACK_PREPARED") {
      txn = TxnKind::kRollbackPrepared;
      flags |= F(Flag::kWrite);
    } else {
      return F(Flag::kWrite);  // unknown: be safe
    }
    if (BoolField(body, "chain")) flags |= F(Flag::kTxnChain);
    const TxnOptions options = ParseTxnOptions(ArrayField(body, "options"));
    flags |= TxnOptionFlags(options);
    SetTxn(txn, options);
    return flags;
  }

  // A standby refuses READ WRITE and SERIALIZABLE transactions.
  static uint64_t TxnOptionFlags(const TxnOptions& options) {
    return options.access == TxnAccess::kReadWrite || options.isolation == Isolation::kSerializable
               ? F(Flag::kWrite)
               : 0;
  }

  void SetTxn(TxnKind txn, const TxnOptions& options) {
    if (txn_ != TxnKind::kNone) return;  // the first transaction statement of the string
    txn_ = txn;
    txn_options_ = options;
  }

  uint64_t VariableSet(const json::object& body, std::string_view text) {
    const std::string_view kind = StringField(body, "kind");
    const std::string_view name = StringField(body, "name");
    const bool local = BoolField(body, "is_local");
    if (kind == "VAR_SET_MULTI") {
      const TxnOptions options = ParseTxnOptions(ArrayField(body, "args"));
      if (name == "TRANSACTION") {
        SetTxn(TxnKind::kSetTransaction, options);
        return TxnOptionFlags(options);
      }
      if (name == "TRANSACTION SNAPSHOT") {
        SetTxn(TxnKind::kSetTransaction, options);
        return Flag::kTxnSnapshot | Flag::kWrite;  // the snapshot was exported on the primary
      }
      if (name == "SESSION CHARACTERISTICS") {
        SetTxn(TxnKind::kSetSessionCharacteristics, options);
        if (options.isolation != Isolation::kDefault) {
          AddItem(Flag::kSetSession, "default_transaction_isolation",
                  QuoteLiteral(IsolationName(options.isolation)), text);
        }
        if (options.access != TxnAccess::kDefault) {
          AddItem(Flag::kSetSession, "default_transaction_read_only",
                  options.access == TxnAccess::kReadOnly ? "on" : "off", text);
        }
        if (options.deferrable != Deferrable::kDefault) {
          AddItem(Flag::kSetSession, "default_transaction_deferrable",
                  options.deferrable == Deferrable::kDeferrable ? "on" : "off", text);
        }
        return F(Flag::kSetSession);
      }
      return F(Flag::kWrite);  // unknown: be safe
    }
    if (kind == "VAR_RESET_ALL") {
      AddItem(Flag::kResetAll, {}, {}, text);
      return F(Flag::kResetAll);
    }
    if (kind == "VAR_RESET" || kind == "VAR_SET_DEFAULT") {
      const Flag flag = local ? Flag::kSetLocal : Flag::kReset;
      AddItem(flag, name, {}, text);
      return F(flag);
    }
    // VAR_SET_VALUE, VAR_SET_CURRENT.
    const Flag flag = local ? Flag::kSetLocal : Flag::kSetSession;
    const json::array* args = ArrayField(body, "args");
    uint64_t flags = F(flag);
    // The GUC forms of SET TRANSACTION READ WRITE / ISOLATION LEVEL SERIALIZABLE.
    if (args != nullptr && !args->empty()) {
      const Constant c = ConstantOf(args->front());
      if (name == "transaction_read_only" && BoolArgument(args->front()) == false) {
        flags |= F(Flag::kWrite);
      }
      if (name == "transaction_isolation" && c.kind == Constant::kString &&
          EqualsIgnoreCase(c.text, "serializable")) {
        flags |= F(Flag::kWrite);
      }
    }
    AddItem(flag, name, SetValueText(args), text);
    return flags;
  }

  uint64_t Explain(const json::object& body, std::string_view text) {
    bool analyze = false;
    if (const json::array* options = ArrayField(body, "options")) {
      for (const json::value& option : *options) {
        std::string_view type;
        const json::object* def;
        if (!Unwrap(option, &type, &def) || type != "DefElem") continue;
        if (StringField(*def, "defname") != "analyze") continue;
        const json::value* arg = def->if_contains("arg");
        if (arg == nullptr) {
          analyze = true;
        } else if (const std::optional<std::string_view> s = StringNode(*arg)) {
          analyze = ParseBool(*s).value_or(true);
        } else {
          analyze = BoolArgument(*arg).value_or(true);
        }
      }
    }
    const json::value* query = body.if_contains("query");
    std::string_view type;
    const json::object* inner;
    if (query == nullptr || !Unwrap(*query, &type, &inner)) return F(Flag::kWrite);
    if (analyze) return Statement(type, *inner, text);
    // Plain EXPLAIN only plans: nothing runs, but the objects it names must exist there.
    const size_t items_before = items_.size();
    const uint64_t flags = Statement(type, *inner, text);
    items_.resize(items_before);
    return flags & (Flag::kTempReference | Flag::kExecute);
  }

  uint64_t Prepare(const json::object& body, std::string_view text) {
    const json::value* query = body.if_contains("query");
    std::string_view type;
    const json::object* inner;
    uint64_t inner_flags = F(Flag::kWrite);
    const size_t items_before = items_.size();
    const TxnKind txn_before = txn_;
    if (query != nullptr && Unwrap(*query, &type, &inner)) {
      inner_flags = Statement(type, *inner, text);
    }
    items_.resize(items_before);
    txn_ = txn_before;
    // PREPARE goes where its statement will run when EXECUTEd.
    const Target target = (inner_flags & kPrimaryMask) != 0 ? Target::kPrimary : Target::kReplica;
    AddItem(Flag::kPrepare, StringField(body, "name"), {}, text, target);
    return F(Flag::kPrepare) | (inner_flags & kPrimaryMask);
  }

  void AddItem(Flag kind, std::string_view name, std::string_view value, std::string_view text,
               Target target = Target::kReplica) {
    items_.push_back(
        SessionItem{kind, std::string(name), std::string(value), std::string(text), target});
  }

  // --- The generic walk: every node of a statement's tree, iteratively. ---------------------

  uint64_t WalkNotExecuted(const json::object& root, std::string_view text) {
    const size_t items_before = items_.size();
    const uint64_t flags = Walk(root, text);
    items_.resize(items_before);
    return flags;
  }

  uint64_t Walk(const json::object& root, std::string_view text) {
    uint64_t flags = 0;
    const size_t base = stack_.size();
    stack_.push_back({&root, nullptr});
    while (stack_.size() > base) {
      const Frame frame = stack_.back();
      stack_.pop_back();
      if (frame.object != nullptr) {
        WalkObject(*frame.object, &flags, text);
      } else {
        for (auto it = frame.array->rbegin(); it != frame.array->rend(); ++it) Push(*it);
      }
    }
    return flags;
  }

  void Push(const json::value& v) {
    if (const json::object* o = v.if_object()) {
      stack_.push_back({o, nullptr});
    } else if (const json::array* a = v.if_array()) {
      stack_.push_back({nullptr, a});
    }
  }

  void WalkObject(const json::object& o, uint64_t* flags, std::string_view text) {
    for (const auto& kv : o) {
      const std::string_view key = kv.key();
      const json::value& value = kv.value();
      if (key.empty()) continue;
      if (key.front() >= 'A' && key.front() <= 'Z') {
        if (const json::object* body = value.if_object()) Node(key, *body, flags, text);
        continue;
      }
      switch (key.front()) {
        case 'l':
          // SELECT ... FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE: row locks need the
          // primary.
          if (key == "lockingClause") *flags |= F(Flag::kWrite);
          break;
        case 'i':
          if (key == "intoClause") *flags |= F(Flag::kWrite);  // SELECT INTO
          break;
        case 'r':
          if (key == "relpersistence" && value.is_string() && value.get_string() == "t") {
            *flags |= F(Flag::kCreateTemp);
          }
          break;
        case 's':
          if (key == "schemaname" && value.is_string() && IsTempSchema(View(value.get_string()))) {
            *flags |= F(Flag::kTempReference);
          }
          break;
        case 'f':
          if (key == "funccall" && value.is_object()) {
            FuncCall(value.get_object(), flags, text);  // CallStmt.funccall is a bare FuncCall
            continue;
          }
          break;
        default:
          break;
      }
      Push(value);
    }
  }

  void Node(std::string_view type, const json::object& body, uint64_t* flags,
            std::string_view text) {
    switch (KindOf(type)) {
      case NodeKind::kLeaf:
        return;
      case NodeKind::kWriteStmt:
        *flags |= F(Flag::kWrite);  // a data-modifying CTE or sub-statement
        break;
      case NodeKind::kFuncCall:
        FuncCall(body, flags, text);
        return;  // FuncCall pushes its children itself
      case NodeKind::kAExpr:
        if (const json::array* name = ArrayField(body, "name")) Operator(*name, flags);
        break;
      case NodeKind::kSubLink:
        if (const json::array* name = ArrayField(body, "operName")) Operator(*name, flags);
        break;
      case NodeKind::kColumnRef:
        if (const json::array* fields = ArrayField(body, "fields")) ColumnRef(*fields, flags);
        return;
      case NodeKind::kAIndirection:
        if (const json::array* ind = ArrayField(body, "indirection")) {
          for (const json::value& v : *ind) {
            if (std::optional<std::string_view> name = StringNode(v)) Attribute(*name, flags);
          }
        }
        break;
      case NodeKind::kOther:
        break;
    }
    stack_.push_back({&body, nullptr});
  }

  // A function call: its class from the catalog, the roles the classifier knows, and then the
  // arguments and clauses inside it.
  void FuncCall(const json::object& body, uint64_t* flags, std::string_view text) {
    const json::array* funcname = ArrayField(body, "funcname");
    std::string_view schema;
    std::string_view name;
    if (funcname != nullptr && !funcname->empty()) {
      name = StringNode(funcname->back()).value_or(std::string_view());
      if (funcname->size() >= 2) {
        schema = StringNode((*funcname)[funcname->size() - 2]).value_or(std::string_view());
      }
    }
    if (IsTempSchema(schema)) *flags |= F(Flag::kTempReference);
    const FunctionInfo info = catalog_.LookupFunction(schema, name);
    const json::array* args = ArrayField(body, "args");
    bool class_applies = true;
    switch (info.role) {
      case FunctionRole::kSetConfig: {
        // set_config(name, value, is_local): is_local true is SET LOCAL, anything else SET.
        const bool local =
            args != nullptr && args->size() == 3 && BoolArgument((*args)[2]).value_or(false);
        std::string_view setting;
        std::string value;
        if (args != nullptr && args->size() >= 2) {
          const Constant n = ConstantOf((*args)[0]);
          const Constant v = ConstantOf((*args)[1]);
          if (n.kind == Constant::kString) setting = n.text;
          if (v.kind == Constant::kString) value = QuoteLiteral(v.text);
        }
        const Flag flag = local ? Flag::kSetConfigLocal : Flag::kSetConfigSession;
        *flags |= F(flag);
        AddItem(flag, setting, value, text);
        class_applies = false;  // its effect is the session state above
        break;
      }
      case FunctionRole::kSessionAdvisoryLock:
        *flags |= F(Flag::kSessionAdvisoryLock);
        break;
      case FunctionRole::kXactAdvisoryLock:
        *flags |= F(Flag::kXactAdvisoryLock);
        break;
      case FunctionRole::kNotify: {
        *flags |= F(Flag::kNotify);
        std::string_view channel;
        std::string_view payload;
        if (args != nullptr && !args->empty()) {
          const Constant c = ConstantOf((*args)[0]);
          if (c.kind == Constant::kString) channel = c.text;
          if (args->size() >= 2) {
            const Constant p = ConstantOf((*args)[1]);
            if (p.kind == Constant::kString) payload = p.text;
          }
        }
        AddItem(Flag::kNotify, channel, payload, text);
        break;
      }
      case FunctionRole::kNone:
        break;
    }
    if (class_applies) {
      if (info.function_class == FunctionClass::kPrimary) {
        *flags |= F(Flag::kPrimaryFunction);
      } else if (info.function_class == FunctionClass::kVolatile) {
        *flags |= F(Flag::kVolatileFunction);
      }
    }
    // Arguments, FILTER, OVER, ORDER BY inside the call.
    for (const auto& kv : body) {
      if (kv.key() != "funcname") Push(kv.value());
    }
  }

  void Operator(const json::array& name, uint64_t* flags) {
    if (name.empty()) return;
    const std::optional<std::string_view> op = StringNode(name.back());
    if (!op || !IsOperatorName(*op)) return;  // BETWEEN etc. are no operators
    std::string_view schema;
    if (name.size() >= 2) schema = StringNode(name[name.size() - 2]).value_or(std::string_view());
    if (IsTempSchema(schema)) *flags |= F(Flag::kTempReference);
    const FunctionClass c = catalog_.LookupOperator(schema, *op);
    if (c == FunctionClass::kPrimary) {
      *flags |= F(Flag::kPrimaryFunction);
    } else if (c == FunctionClass::kVolatile) {
      *flags |= F(Flag::kVolatileFunction);
    }
  }

  // `a.b` may call function b(a) (attribute notation); `pg_temp.t.c` names a temp table.
  void ColumnRef(const json::array& fields, uint64_t* flags) {
    if (fields.size() < 2) return;
    if (fields.size() >= 3) {
      const std::optional<std::string_view> schema = StringNode(fields[fields.size() - 3]);
      if (schema && IsTempSchema(*schema)) *flags |= F(Flag::kTempReference);
    }
    if (const std::optional<std::string_view> name = StringNode(fields.back())) {
      Attribute(*name, flags);
    }
  }

  void Attribute(std::string_view name, uint64_t* flags) {
    const FunctionClass c = catalog_.LookupAttribute(name);
    if (c == FunctionClass::kPrimary) {
      *flags |= F(Flag::kPrimaryFunction);
    } else if (c == FunctionClass::kVolatile) {
      *flags |= F(Flag::kVolatileFunction);
    }
  }

  const FunctionCatalog& catalog_;
  const std::string_view sql_;
  std::vector<Frame>& stack_;
  uint64_t flags_ = 0;
  size_t statements_ = 0;
  TxnKind txn_ = TxnKind::kNone;
  TxnOptions txn_options_;
  std::vector<SessionItem> items_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Routing rules: ordered regular expressions, compiled once per classifier.

class Classifier::Rules {
 public:
  explicit Rules(const std::vector<config::RoutingRule>& rules) {
    for (const config::RoutingRule& rule : rules) {
      try {
        rules_.push_back({boost::regex(rule.match, boost::regex::perl | boost::regex::optimize),
                          rule.route == config::Route::kPrimary ? Hint::kPrimary : Hint::kReplica});
      } catch (const std::exception& e) {
        throw std::invalid_argument("routing rule '" + rule.match + "': " + e.what());
      }
    }
  }

  bool empty() const { return rules_.empty(); }

  // The hint of the first rule that matches anywhere in `sql`. A rule that gives up (Boost.Regex
  // bounds the work of a match instead of recursing without limit) counts in *errors.
  Hint Match(std::string_view sql, uint64_t* errors) const {
    for (const Rule& rule : rules_) {
      try {
        if (boost::regex_search(sql.begin(), sql.end(), rule.regex)) return rule.hint;
      } catch (const std::exception&) {
        ++*errors;
      }
    }
    return Hint::kNone;
  }

 private:
  struct Rule {
    boost::regex regex;
    Hint hint;
  };
  std::vector<Rule> rules_;
};

// ---------------------------------------------------------------------------------------------
// The parser: libpg_query's JSON output read into a reusable arena.

class Classifier::Parser {
 public:
  Parser() : arena_(new unsigned char[kArenaSize]) {
    json::parse_options options;
    options.max_depth = kMaxJsonDepth;
    parser_.emplace(json::storage_ptr(), options);
  }

  Classification Run(const FunctionCatalog& catalog, std::string_view sql, Stats* stats) {
    ++stats->parsed;
    if (sql.find('\0') != std::string_view::npos) return ParseError(stats);
    if (sql.size() > kParseDepthCheckMinSize && EstimateParseDepth(sql) > kMaxParseDepth) {
      Classification c;
      c.Set(Flag::kTooDeep);
      c.target = Target::kPrimary;
      c.statement_count = 1;
      return c;
    }
    text_.assign(sql);  // NUL-terminated for libpg_query
    PgQueryParseResult result = pg_query_parse(text_.c_str());
    if (result.error != nullptr) {
      pg_query_free_parse_result(result);
      return ParseError(stats);
    }
    Classification c;
    {
      json::monotonic_resource arena(arena_.get(), kArenaSize);
      boost::system::error_code ec;
      parser_->reset(&arena);
      parser_->write(result.parse_tree, std::strlen(result.parse_tree), ec);
      pg_query_free_parse_result(result);
      if (ec) return ParseError(stats);
      const json::value tree = parser_->release();
      c = Analyze(catalog, sql, tree);
      parser_->reset();  // drop references into the arena before it goes
    }
    return c;
  }

 private:
  static constexpr size_t kArenaSize = 64 << 10;

  static Classification ParseError(Stats* stats) {
    ++stats->parse_errors;
    Classification c;
    c.Set(Flag::kParseError);
    c.target = Target::kPrimary;
    return c;
  }

  Classification Analyze(const FunctionCatalog& catalog, std::string_view sql,
                         const json::value& tree) {
    stack_.clear();
    Analyzer analyzer(catalog, sql, &stack_);
    const json::object* root = tree.if_object();
    const json::array* stmts = root != nullptr ? ArrayField(*root, "stmts") : nullptr;
    if (stmts != nullptr) {
      for (const json::value& raw : *stmts) {
        if (const json::object* o = raw.if_object()) analyzer.RawStatement(*o);
      }
    }
    return analyzer.Finish();
  }

  std::unique_ptr<unsigned char[]> arena_;
  std::optional<json::parser> parser_;
  std::string text_;
  std::vector<Frame> stack_;
};

// ---------------------------------------------------------------------------------------------

ClassifierOptions ClassifierOptions::FromConfig(const config::RoutingConfig& routing) {
  ClassifierOptions options;
  options.cache_size = routing.classifier_cache_size;
  options.rules = routing.rules;
  return options;
}

Classifier::Classifier(std::shared_ptr<const FunctionCatalog> catalog, ClassifierOptions options)
    : catalog_(std::move(catalog)),
      precheck_(options.precheck),
      cache_(options.cache_size, options.cache_max_bytes, options.cache_max_text_bytes),
      rules_(std::make_unique<Rules>(options.rules)),
      parser_(std::make_unique<Parser>()) {
  if (catalog_ == nullptr) throw std::invalid_argument("Classifier needs a FunctionCatalog");
}

Classifier::~Classifier() = default;

Classification Classifier::Classify(std::string_view sql) {
  if (const Classification* cached = cache_.Find(sql)) {
    ++stats_.hits;
    return *cached;
  }
  ++stats_.misses;
  Classification c;
  if (precheck_ && PrecheckSimple(sql, catalog_->simple_operators_safe(), &c)) {
    ++stats_.prechecked;
    ApplyHint(sql, &c);
    // Cheaper to redo than to cache, unless rules must run on it.
    if (!rules_->empty()) cache_.Insert(sql, c);
    return c;
  }
  c = ClassifyMiss(sql);
  cache_.Insert(sql, c);
  return c;
}

Classification Classifier::ClassifyUncached(std::string_view sql) { return ClassifyMiss(sql); }

Classification Classifier::ClassifyMiss(std::string_view sql) {
  Classification c = parser_->Run(*catalog_, sql, &stats_);
  ApplyHint(sql, &c);
  return c;
}

void Classifier::ApplyHint(std::string_view sql, Classification* c) {
  Hint hint = FindCommentHint(sql);
  if (hint != Hint::kNone) {
    c->Set(Flag::kHintFromComment);
  } else if (!rules_->empty()) {
    hint = rules_->Match(sql, &stats_.rule_errors);
    if (hint != Hint::kNone) c->Set(Flag::kHintFromRule);
  }
  c->hint = hint;
  if (hint == Hint::kPrimary) {
    c->target = Target::kPrimary;
  } else if (hint == Hint::kReplica && !c->HasAny(kHardPrimaryMask)) {
    c->target = Target::kReplica;
  }
}

void Classifier::SetOptions(const ClassifierOptions& options) {
  rules_ = std::make_unique<Rules>(options.rules);
  precheck_ = options.precheck;
  cache_.Reset(options.cache_size, options.cache_max_bytes, options.cache_max_text_bytes);
}

void Classifier::SetCatalog(std::shared_ptr<const FunctionCatalog> catalog) {
  if (catalog == nullptr || catalog == catalog_) return;
  catalog_ = std::move(catalog);
  cache_.Clear();
}

}  // namespace pgrelay::routing
