#include "proxy/session_state.h"

#include <algorithm>
#include <cctype>

namespace pgrelay::proxy {

namespace {

// Whether a SET value (SQL text: on, 'on', true, 1, ...) means "on".
bool IsOn(std::string_view value) {
  std::string v;
  for (char c : value) {
    if (c != '\'' && c != '"' && c != ' ') v += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return v == "on" || v == "true" || v == "yes" || v == "1" || v == "t" || v == "y";
}

}  // namespace

void SessionState::RecordSet(std::string_view name, std::string_view statement,
                             bool in_transaction, std::string_view value) {
  Change c{std::string(name), std::string(statement), std::string(value), false};
  if (in_transaction) {
    tentative_.push_back(std::move(c));
  } else {
    Apply(c);
  }
}

void SessionState::RecordReset(std::string_view name, bool in_transaction) {
  Change c{std::string(name), std::string(), std::string(), false};
  if (in_transaction) {
    tentative_.push_back(std::move(c));
  } else {
    Apply(c);
  }
}

void SessionState::RecordResetAll(bool in_transaction) {
  Change c{std::string(), std::string(), std::string(), true};
  if (in_transaction) {
    tentative_.push_back(std::move(c));
  } else {
    Apply(c);
  }
}

void SessionState::EndTransaction(bool committed) {
  if (committed) {
    for (const Change& c : tentative_) Apply(c);
  }
  tentative_.clear();
}

void SessionState::Apply(const Change& c) {
  ++settings_version_;
  if (c.reset_all) {
    settings_.clear();
    default_read_only_ = false;
    return;
  }
  auto it = std::find_if(settings_.begin(), settings_.end(),
                         [&](const auto& s) { return s.first == c.name; });
  if (it != settings_.end()) settings_.erase(it);
  if (!c.statement.empty()) settings_.emplace_back(c.name, c.statement);
  if (c.name == "default_transaction_read_only" || c.name == "session characteristics") {
    default_read_only_ = !c.statement.empty() && IsOn(c.value);
  }
}

void SessionState::DefinePrepared(std::string_view name, bool sql, std::string_view definition,
                                  const routing::UnitTraits& traits,
                                  const routing::Classification* effect,
                                  std::string_view effect_sql) {
  Prepared& p = prepared_[std::string(name)];
  p.id = next_prepared_id_++;
  p.sql = sql;
  p.definition.assign(definition);
  p.traits = traits;
  p.effect_sql.assign(effect_sql);
  if (effect != nullptr) {
    p.effect = *effect;
  } else {
    p.effect.reset();
  }
}

const SessionState::Prepared* SessionState::FindPrepared(std::string_view name) const {
  auto it = prepared_.find(std::string(name));
  return it == prepared_.end() ? nullptr : &it->second;
}

void SessionState::Deallocate(std::string_view name) { prepared_.erase(std::string(name)); }

void SessionState::DeallocateAll() { prepared_.clear(); }

void SessionState::Pin(std::string_view reason) {
  if (std::find(pins_.begin(), pins_.end(), reason) == pins_.end()) pins_.emplace_back(reason);
}

void SessionState::UnpinListen() { std::erase(pins_, std::string("LISTEN")); }

void SessionState::DiscardAll() {
  settings_.clear();
  tentative_.clear();
  ++settings_version_;
  default_read_only_ = false;
  prepared_.clear();
  pins_.clear();
}

}  // namespace pgrelay::proxy
