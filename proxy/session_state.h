// The session-level state a client has built up that every backend it uses must share: its
// SET settings (replayed on other backends), its prepared statements (re-prepared where they
// are used), and what pins it to the primary. Owned by one session; not thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "routing/router.h"

namespace pgrelay::proxy {

class SessionState {
 public:
  // --- SET / RESET (session level) ---
  // Increases whenever the settings a new backend must replay change.
  uint64_t settings_version() const { return settings_version_; }
  // `name` is the setting (lower case); `statement` the SET statement's own text; `value` the
  // value as SQL text (used to follow default_transaction_read_only).
  void RecordSet(std::string_view name, std::string_view statement, bool in_transaction,
                 std::string_view value);
  void RecordReset(std::string_view name, bool in_transaction);
  void RecordResetAll(bool in_transaction);
  // Transaction end: settings changed inside it take effect, or are dropped.
  void EndTransaction(bool committed);
  // One simple-query string bringing a backend to this session's settings.
  const std::vector<std::pair<std::string, std::string>>& settings() const { return settings_; }
  bool default_read_only() const { return default_read_only_; }

  // --- Prepared statements (SQL PREPARE and protocol-level named Parse share one namespace) ---
  struct Prepared {
    uint64_t id = 0;          // changes when the name is redefined
    bool sql = false;         // true: `definition` is a PREPARE statement; false: a Parse message
    std::string definition;
    routing::UnitTraits traits;
    // Set only for statements with session effects (SET, DISCARD, LISTEN, ...): their text and
    // classification, applied whenever the statement is executed.
    std::string effect_sql;
    std::optional<routing::Classification> effect;
  };
  void DefinePrepared(std::string_view name, bool sql, std::string_view definition,
                      const routing::UnitTraits& traits,
                      const routing::Classification* effect = nullptr,
                      std::string_view effect_sql = {});
  const Prepared* FindPrepared(std::string_view name) const;
  void Deallocate(std::string_view name);
  void DeallocateAll();

  // --- Pins: session-bound features that live on the primary ---
  void Pin(std::string_view reason);
  void UnpinListen();
  bool pinned() const { return !pins_.empty(); }
  const std::vector<std::string>& pins() const { return pins_; }

  // DISCARD ALL: forgets everything above.
  void DiscardAll();

 private:
  struct Change {
    std::string name;       // empty with reset_all
    std::string statement;  // empty for a RESET
    std::string value;
    bool reset_all = false;
  };
  void Apply(const Change& c);

  std::vector<std::pair<std::string, std::string>> settings_;  // name -> SET statement, in order
  std::vector<Change> tentative_;
  uint64_t settings_version_ = 0;
  bool default_read_only_ = false;
  std::unordered_map<std::string, Prepared> prepared_;
  uint64_t next_prepared_id_ = 1;
  std::vector<std::string> pins_;
};

}  // namespace pgrelay::proxy
