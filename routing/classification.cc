#include "routing/classification.h"

#include <boost/json.hpp>

namespace pgrelay::routing {

const std::vector<SessionItem>& Classification::session_items() const {
  static const std::vector<SessionItem> kNoItems;
  return items != nullptr ? *items : kNoItems;
}

bool Classification::operator==(const Classification& other) const {
  return target == other.target && txn == other.txn && txn_access == other.txn_access &&
         isolation == other.isolation && deferrable == other.deferrable && hint == other.hint &&
         statement_count == other.statement_count && flags == other.flags &&
         session_items() == other.session_items();
}

std::string_view ToString(Target t) { return t == Target::kPrimary ? "primary" : "replica"; }

std::string_view ToString(TxnKind k) {
  switch (k) {
    case TxnKind::kNone:
      return "none";
    case TxnKind::kBegin:
      return "begin";
    case TxnKind::kCommit:
      return "commit";
    case TxnKind::kRollback:
      return "rollback";
    case TxnKind::kSavepoint:
      return "savepoint";
    case TxnKind::kRelease:
      return "release";
    case TxnKind::kRollbackTo:
      return "rollback_to";
    case TxnKind::kPrepareTransaction:
      return "prepare_transaction";
    case TxnKind::kCommitPrepared:
      return "commit_prepared";
    case TxnKind::kRollbackPrepared:
      return "rollback_prepared";
    case TxnKind::kSetTransaction:
      return "set_transaction";
    case TxnKind::kSetSessionCharacteristics:
      return "set_session_characteristics";
  }
  return "unknown";
}

std::string_view ToString(TxnAccess a) {
  switch (a) {
    case TxnAccess::kDefault:
      return "default";
    case TxnAccess::kReadOnly:
      return "read_only";
    case TxnAccess::kReadWrite:
      return "read_write";
  }
  return "unknown";
}

std::string_view ToString(Isolation i) {
  switch (i) {
    case Isolation::kDefault:
      return "default";
    case Isolation::kReadUncommitted:
      return "read_uncommitted";
    case Isolation::kReadCommitted:
      return "read_committed";
    case Isolation::kRepeatableRead:
      return "repeatable_read";
    case Isolation::kSerializable:
      return "serializable";
  }
  return "unknown";
}

std::string_view ToString(Deferrable d) {
  switch (d) {
    case Deferrable::kDefault:
      return "default";
    case Deferrable::kDeferrable:
      return "deferrable";
    case Deferrable::kNotDeferrable:
      return "not_deferrable";
  }
  return "unknown";
}

std::string_view ToString(Hint h) {
  switch (h) {
    case Hint::kNone:
      return "none";
    case Hint::kPrimary:
      return "primary";
    case Hint::kReplica:
      return "replica";
  }
  return "unknown";
}

std::string_view ToString(Flag f) {
  switch (f) {
    case Flag::kWrite:
      return "write";
    case Flag::kVolatileFunction:
      return "volatile_function";
    case Flag::kPrimaryFunction:
      return "primary_function";
    case Flag::kParseError:
      return "parse_error";
    case Flag::kExecute:
      return "execute";
    case Flag::kEmpty:
      return "empty";
    case Flag::kMultiStatement:
      return "multi_statement";
    case Flag::kHintFromComment:
      return "hint_from_comment";
    case Flag::kHintFromRule:
      return "hint_from_rule";
    case Flag::kTxnChain:
      return "txn_chain";
    case Flag::kTxnSnapshot:
      return "txn_snapshot";
    case Flag::kSetSession:
      return "set_session";
    case Flag::kSetLocal:
      return "set_local";
    case Flag::kReset:
      return "reset";
    case Flag::kResetAll:
      return "reset_all";
    case Flag::kSetConfigSession:
      return "set_config_session";
    case Flag::kSetConfigLocal:
      return "set_config_local";
    case Flag::kPrepare:
      return "prepare";
    case Flag::kDeallocate:
      return "deallocate";
    case Flag::kDeallocateAll:
      return "deallocate_all";
    case Flag::kDiscardAll:
      return "discard_all";
    case Flag::kDiscardPlans:
      return "discard_plans";
    case Flag::kDiscardSequences:
      return "discard_sequences";
    case Flag::kDiscardTemp:
      return "discard_temp";
    case Flag::kListen:
      return "listen";
    case Flag::kUnlisten:
      return "unlisten";
    case Flag::kUnlistenAll:
      return "unlisten_all";
    case Flag::kNotify:
      return "notify";
    case Flag::kDeclareCursor:
      return "declare_cursor";
    case Flag::kDeclareCursorWithHold:
      return "declare_cursor_with_hold";
    case Flag::kFetchCursor:
      return "fetch_cursor";
    case Flag::kCloseCursor:
      return "close_cursor";
    case Flag::kCloseAllCursors:
      return "close_all_cursors";
    case Flag::kCreateTemp:
      return "create_temp";
    case Flag::kTempReference:
      return "temp_reference";
    case Flag::kLoad:
      return "load";
    case Flag::kSessionAdvisoryLock:
      return "session_advisory_lock";
    case Flag::kXactAdvisoryLock:
      return "xact_advisory_lock";
    case Flag::kFunctionsChanged:
      return "functions_changed";
    case Flag::kTooDeep:
      return "too_deep";
  }
  return "unknown";
}

std::string FlagsToString(uint64_t flags) {
  std::string out;
  for (int bit = 0; bit < 64; ++bit) {
    const uint64_t mask = uint64_t{1} << bit;
    if ((flags & mask) == 0) continue;
    if (!out.empty()) out += ' ';
    out += ToString(static_cast<Flag>(mask));
  }
  return out;
}

std::string ToJson(const Classification& c) {
  boost::json::object o;
  o["target"] = ToString(c.target);
  o["txn"] = ToString(c.txn);
  o["txn_access"] = ToString(c.txn_access);
  o["isolation"] = ToString(c.isolation);
  o["deferrable"] = ToString(c.deferrable);
  o["hint"] = ToString(c.hint);
  o["statement_count"] = c.statement_count;
  boost::json::array flags;
  for (int bit = 0; bit < 64; ++bit) {
    const uint64_t mask = uint64_t{1} << bit;
    if ((c.flags & mask) != 0) flags.emplace_back(ToString(static_cast<Flag>(mask)));
  }
  o["flags"] = std::move(flags);
  boost::json::array items;
  for (const SessionItem& item : c.session_items()) {
    boost::json::object i;
    i["kind"] = ToString(item.kind);
    i["name"] = item.name;
    i["value"] = item.value;
    i["statement"] = item.statement;
    if (item.kind == Flag::kPrepare) i["target"] = ToString(item.target);
    items.emplace_back(std::move(i));
  }
  o["items"] = std::move(items);
  return boost::json::serialize(o);
}

}  // namespace pgrelay::routing
