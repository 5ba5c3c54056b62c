// Classification: what the router needs to know about one SQL string (a simple Query or a
// Parse message): where it may run, its transaction control and its session-state effects.
// A small value type (32 bytes) that is cheap to copy; its SessionItems are immutable and shared.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::routing {

// Where a string may run. kPrimary is "write": the primary only.
enum class Target : uint8_t { kReplica, kPrimary };

enum class TxnKind : uint8_t {
  kNone,
  kBegin,     // BEGIN / START TRANSACTION
  kCommit,    // COMMIT / END
  kRollback,  // ROLLBACK / ABORT
  kSavepoint,
  kRelease,
  kRollbackTo,
  kPrepareTransaction,
  kCommitPrepared,
  kRollbackPrepared,
  kSetTransaction,             // SET TRANSACTION ... (incl. SNAPSHOT)
  kSetSessionCharacteristics,  // SET SESSION CHARACTERISTICS AS TRANSACTION ...
};

enum class TxnAccess : uint8_t { kDefault, kReadOnly, kReadWrite };
enum class Isolation : uint8_t {
  kDefault,
  kReadUncommitted,
  kReadCommitted,
  kRepeatableRead,
  kSerializable,
};
enum class Deferrable : uint8_t { kDefault, kDeferrable, kNotDeferrable };

// A routing hint from a comment (/* pgrelay:primary */, -- pgrelay:replica) or a config rule.
enum class Hint : uint8_t { kNone, kPrimary, kReplica };

// Bits of Classification::flags.
enum class Flag : uint64_t {
  // Why the string goes to the primary.
  kWrite = 1ull << 0,             // writes, locks, or cannot run on a standby; no hint overrides it
  kVolatileFunction = 1ull << 1,  // calls a volatile function not known to be side-effect-free
  kPrimaryFunction = 1ull << 2,   // calls a function of routing.primary_functions
  kParseError = 1ull << 3,        // not valid PostgreSQL 15 SQL: the primary returns the real error
  kExecute = 1ull << 4,   // EXECUTE: where the prepared statement runs is the router's to know
  kTooDeep = 1ull << 39,  // nested too deeply to parse safely (see sql_scan.h); not analyzed
  // Shape.
  kEmpty = 1ull << 5,           // no statement at all (blank, comments, semicolons)
  kMultiStatement = 1ull << 6,  // more than one statement: the flags are the union
  kHintFromComment = 1ull << 7,
  kHintFromRule = 1ull << 8,
  // Transaction control details.
  kTxnChain = 1ull << 9,      // COMMIT/ROLLBACK AND CHAIN
  kTxnSnapshot = 1ull << 10,  // SET TRANSACTION SNAPSHOT
  // Session state: what the router must replay on other backends, or pin the session for.
  kSetSession = 1ull << 11,        // SET name ... (session level; SessionItem has name and value)
  kSetLocal = 1ull << 12,          // SET LOCAL name ...
  kReset = 1ull << 13,             // RESET name / SET name TO DEFAULT
  kResetAll = 1ull << 14,          // RESET ALL
  kSetConfigSession = 1ull << 15,  // set_config(name, value, false) (or is_local not a constant)
  kSetConfigLocal = 1ull << 16,    // set_config(name, value, true)
  kPrepare = 1ull << 17,           // PREPARE name AS ...
  kDeallocate = 1ull << 18,        // DEALLOCATE name
  kDeallocateAll = 1ull << 19,     // DEALLOCATE ALL
  kDiscardAll = 1ull << 20,
  kDiscardPlans = 1ull << 21,
  kDiscardSequences = 1ull << 22,
  kDiscardTemp = 1ull << 23,
  kListen = 1ull << 24,
  kUnlisten = 1ull << 25,               // UNLISTEN name
  kUnlistenAll = 1ull << 26,            // UNLISTEN *
  kNotify = 1ull << 27,                 // NOTIFY or pg_notify()
  kDeclareCursor = 1ull << 28,          // DECLARE name CURSOR WITHOUT HOLD
  kDeclareCursorWithHold = 1ull << 29,  // DECLARE name CURSOR WITH HOLD (outlives its transaction)
  kFetchCursor = 1ull << 30,            // FETCH / MOVE: runs where the cursor is
  kCloseCursor = 1ull << 31,            // CLOSE name
  kCloseAllCursors = 1ull << 32,        // CLOSE ALL
  kCreateTemp = 1ull << 33,             // creates a TEMP/TEMPORARY table, view or sequence
  kTempReference = 1ull << 34,  // names an object in pg_temp (temp objects live on the primary)
  kLoad = 1ull << 35,           // LOAD 'library'
  kSessionAdvisoryLock = 1ull << 36,  // pg_advisory_lock family (held until unlock/disconnect)
  kXactAdvisoryLock = 1ull << 37,     // pg_advisory_xact_lock family (held until transaction end)
  kFunctionsChanged = 1ull << 38,  // may create/alter/drop functions or operators: refresh catalog
};

constexpr uint64_t operator|(Flag a, Flag b) {
  return static_cast<uint64_t>(a) | static_cast<uint64_t>(b);
}
constexpr uint64_t operator|(uint64_t a, Flag b) { return a | static_cast<uint64_t>(b); }

// The details of one session-state statement. Only strings that have such statements carry
// SessionItems, in statement order.
struct SessionItem {
  Flag kind = Flag::kSetSession;  // one of the session-state flags above
  // GUC name (SET, RESET, set_config), prepared statement name (PREPARE, EXECUTE, DEALLOCATE),
  // channel (LISTEN, UNLISTEN, NOTIFY) or cursor name (DECLARE, FETCH, CLOSE); empty for ALL/*.
  // Names are as the server folds them (unquoted identifiers lower-cased).
  std::string name;
  // SET / set_config: the value as SQL text that can follow `SET name TO` ('x', 42, a, b);
  // empty if RESET, or if set_config's value is not a constant. NOTIFY: the payload.
  std::string value;
  // The statement's own text within the string, for replaying it as written.
  std::string statement;
  // PREPARE: where the prepared statement may run when EXECUTEd.
  Target target = Target::kReplica;

  bool operator==(const SessionItem&) const = default;
};

struct Classification {
  // Where the string may run, with the hint already applied. A replica hint never overrides
  // kWrite, kPrimaryFunction or kTempReference.
  Target target = Target::kReplica;
  // Transaction control: the first transaction-control statement of the string.
  TxnKind txn = TxnKind::kNone;
  TxnAccess txn_access = TxnAccess::kDefault;
  Isolation isolation = Isolation::kDefault;
  Deferrable deferrable = Deferrable::kDefault;
  Hint hint = Hint::kNone;
  uint16_t statement_count = 0;  // saturates at 65535
  uint64_t flags = 0;
  // Session-state details; null for most strings.
  std::shared_ptr<const std::vector<SessionItem>> items;

  bool Has(Flag f) const { return (flags & static_cast<uint64_t>(f)) != 0; }
  bool HasAny(uint64_t mask) const { return (flags & mask) != 0; }
  void Set(Flag f) { flags |= static_cast<uint64_t>(f); }

  bool is_write() const { return target == Target::kPrimary; }
  bool parse_error() const { return Has(Flag::kParseError); }
  bool creates_or_changes_functions() const { return Has(Flag::kFunctionsChanged); }
  bool changes_session_state() const { return HasAny(kSessionStateMask); }
  const std::vector<SessionItem>& session_items() const;  // empty if none

  // The comparison ignores the identity of `items`, not their contents.
  bool operator==(const Classification& other) const;

  static constexpr uint64_t kSessionStateMask =
      Flag::kSetSession | Flag::kSetLocal | Flag::kReset | Flag::kResetAll |
      Flag::kSetConfigSession | Flag::kSetConfigLocal | Flag::kPrepare | Flag::kDeallocate |
      Flag::kDeallocateAll | Flag::kDiscardAll | Flag::kDiscardPlans | Flag::kDiscardSequences |
      Flag::kDiscardTemp | Flag::kListen | Flag::kUnlisten | Flag::kUnlistenAll | Flag::kNotify |
      Flag::kDeclareCursor | Flag::kDeclareCursorWithHold | Flag::kCloseCursor |
      Flag::kCloseAllCursors | Flag::kCreateTemp | Flag::kTempReference | Flag::kLoad |
      Flag::kSessionAdvisoryLock | Flag::kXactAdvisoryLock | Flag::kExecute | Flag::kFetchCursor;
};

std::string_view ToString(Target t);      // "replica" | "primary"
std::string_view ToString(TxnKind k);     // "none", "begin", "commit", ...
std::string_view ToString(TxnAccess a);   // "default" | "read_only" | "read_write"
std::string_view ToString(Isolation i);   // "default", "read_committed", ...
std::string_view ToString(Deferrable d);  // "default" | "deferrable" | "not_deferrable"
std::string_view ToString(Hint h);        // "none" | "primary" | "replica"
std::string_view ToString(Flag f);  // "write", "volatile_function", ... (snake_case of the name)
// The set flags, space-separated, in bit order ("write set_session").
std::string FlagsToString(uint64_t flags);
// A one-line JSON object with every field, for tools and test failure messages.
std::string ToJson(const Classification& c);

}  // namespace pgrelay::routing
