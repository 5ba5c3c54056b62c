// Session-state bookkeeping of ClientSession: what a statement string did to the session's
// settings, prepared statements and pins, so other backends can be brought to the same state.
#include <optional>

#include "config/log.h"
#include "proxy/client_session.h"

namespace pgrelay::proxy {

using routing::Flag;

bool ClientSession::HasEffects(const routing::Classification& c) {
  return c.changes_session_state() || c.creates_or_changes_functions() ||
         c.txn == routing::TxnKind::kSetSessionCharacteristics;
}

void ClientSession::StatementsUsed(const routing::Classification& c, std::vector<std::string>* used,
                                   std::vector<std::string>* stale) const {
  if (!c.HasAny(Flag::kExecute | Flag::kDeallocate | Flag::kPrepare)) return;
  for (const routing::SessionItem& item : c.session_items()) {
    if (item.name.empty()) continue;
    if (item.kind == Flag::kExecute || item.kind == Flag::kDeallocate) used->push_back(item.name);
    if (item.kind == Flag::kPrepare && state_.FindPrepared(item.name) == nullptr) {
      stale->push_back(item.name);
    }
  }
}

void ClientSession::NoteStatementEffects(std::string_view sql, const routing::Classification& c,
                                         Backend* b) {
  if (c.txn == routing::TxnKind::kSetSessionCharacteristics && c.statement_count == 1) {
    state_.RecordSet("session characteristics", sql, tx_predicted_,
                     c.txn_access == routing::TxnAccess::kReadOnly ? "on" : "off");
    if (!tx_predicted_) b->state_version = state_.settings_version();
  }
  if (c.creates_or_changes_functions()) ctx_.catalog->Poke();
  if (!c.changes_session_state()) return;
  bool settings_changed = false;
  for (const routing::SessionItem& item : c.session_items()) {
    switch (item.kind) {
      case Flag::kSetSession:
        state_.RecordSet(item.name, item.statement, tx_predicted_, item.value);
        settings_changed = true;
        break;
      case Flag::kSetConfigSession: {
        // set_config(name, value, false): replay as a plain SET when the value is a constant.
        std::string replay =
            item.value.empty() ? item.statement : "SET " + item.name + " TO " + item.value;
        state_.RecordSet(item.name, replay, tx_predicted_, item.value);
        settings_changed = true;
        break;
      }
      case Flag::kReset:
        state_.RecordReset(item.name, tx_predicted_);
        settings_changed = true;
        break;
      case Flag::kResetAll:
        state_.RecordResetAll(tx_predicted_);
        settings_changed = true;
        break;
      case Flag::kPrepare: {
        routing::UnitTraits traits;
        traits.write = item.target == routing::Target::kPrimary;
        state_.DefinePrepared(item.name, /*sql=*/true, item.statement, traits);
        if (const SessionState::Prepared* p = state_.FindPrepared(item.name))
          b->prepared[item.name] = p->id;
        break;
      }
      case Flag::kDeallocate:
        state_.Deallocate(item.name);
        b->prepared.erase(item.name);
        break;
      case Flag::kDeallocateAll:
        state_.DeallocateAll();
        b->prepared.clear();
        break;
      case Flag::kUnlistenAll:
        state_.UnpinListen();
        break;
      default:
        break;
    }
  }
  if (c.Has(Flag::kDiscardAll)) {
    // Everything session-level is gone on `b`; other connections are simply dropped.
    state_.DiscardAll();
    b->prepared.clear();
    b->state_version = state_.settings_version();
    DropOtherBackends(b);
    PGRELAY_LOG(kDebug, "session", "client " << peer_ << ": DISCARD ALL, session unpinned");
  }
  const bool was_pinned = state_.pinned();
  std::optional<admin::PinReason> first_reason;
  auto pin = [&](std::string_view reason, admin::PinReason metric) {
    state_.Pin(reason);
    if (!first_reason) first_reason = metric;
  };
  if (c.Has(Flag::kCreateTemp)) pin("temporary objects", admin::PinReason::kTemporaryObjects);
  if (c.Has(Flag::kSessionAdvisoryLock)) {
    pin("session advisory lock", admin::PinReason::kAdvisoryLock);
  }
  if (c.Has(Flag::kListen)) pin("LISTEN", admin::PinReason::kListen);
  if (c.Has(Flag::kDeclareCursorWithHold)) {
    pin("WITH HOLD cursor", admin::PinReason::kWithHoldCursor);
  }
  if (c.Has(Flag::kLoad)) {
    pin("LOAD", admin::PinReason::kLoad);
    b->loaded = true;
  }
  if (settings_changed && !tx_predicted_) b->state_version = state_.settings_version();
  if (state_.pinned() && !was_pinned && first_reason) {
    // Counted once per pin: a session unpinned (DISCARD ALL, UNLISTEN *) and pinned again
    // counts again.
    worker_.metrics->Inc(ctx_.metrics->sessions_pinned.At(*first_reason));
    PGRELAY_LOG(kInfo, "session",
                "client " << peer_ << " pinned to the primary by " << state_.pins().front());
  }
}

void ClientSession::DropOtherBackends(Backend* keep) {
  for (auto& slot : backends_) {
    Backend* other = slot.get();
    if (other == nullptr || other == keep || !other->alive || other->forward_pending > 0) continue;
    // Closing ends its reader; the next unit routed there opens a fresh connection.
    other->alive = false;
    CountBackend(other, false);
    error_code ignored;
    other->conn->socket().close(ignored);
    if (unnamed_home_ == other) unnamed_home_ = nullptr;
  }
}

}  // namespace pgrelay::proxy
