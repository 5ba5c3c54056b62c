// The relay half of ClientSession: routing units of work to backends and relaying replies back
// in order. See client_session.h for the model; docs/routing.md for the guarantees.
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <exception>
#include <variant>

#include "config/log.h"
#include "proxy/client_session.h"
#include "proxy/pgrelay_settings.h"
#include "proxy/protocol/frame_scanner.h"
#include "proxy/protocol/messages.h"
#include "proxy/watchdog.h"

namespace pgrelay::proxy {

namespace {

using protocol::FrameScanner;
namespace sqlstate = protocol::sqlstate;

// Backends are trusted to frame correctly; this only guards against a corrupt stream.
constexpr uint32_t kMaxBackendMessage = 0x7fffffff;
// An extended-protocol batch held longer than this is sent before its Sync arrives.
constexpr size_t kMaxHeldBatch = 1 << 20;

// Appends bytes to a gather list, merging with the previous piece when contiguous, so a batch of
// relayed messages leaves in one writev.
void Gather(std::vector<asio::const_buffer>& out, std::string_view bytes) {
  if (!out.empty()) {
    const asio::const_buffer& last = out.back();
    if (static_cast<const char*>(last.data()) + last.size() == bytes.data()) {
      out.back() = asio::const_buffer(last.data(), last.size() + bytes.size());
      return;
    }
  }
  out.emplace_back(bytes.data(), bytes.size());
}

void AppendQuery(std::string* out, std::string_view sql) {
  protocol::MessageWriter(out).Begin('Q').CString(sql).End();
}

void AppendSync(std::string* out) { protocol::MessageWriter(out).Begin('S').End(); }

// Parse, Bind, Describe, Close, Execute (held for their batch until Sync) and CopyDone/CopyFail
// (passed on): handled without routing or waiting (BufferMessage).
bool IsHeld(char type) {
  switch (type) {
    case 'P':
    case 'B':
    case 'D':
    case 'C':
    case 'E':
    case 'c':
    case 'f':
      return true;
    default:
      return false;
  }
}

std::string QuoteIdent(std::string_view name) {
  std::string q = "\"";
  for (char c : name) {
    if (c == '"') q += '"';
    q += c;
  }
  q += '"';
  return q;
}

}  // namespace

awaitable<void> ClientSession::Relay() {
  StartWarmUp();
  try {
    co_await ClientPump();
  } catch (const std::exception& e) {
    PGRELAY_LOG(kError, "session", "client " << peer_ << ": internal error: " << e.what());
  }
  ending_ = true;
  co_await EndBackends();
}

bool ClientSession::Reusable(const Backend& b, const health::Topology& topology) const {
  return !b.pool_key.empty() && b.alive && b.reader_running && b.dropped == nullptr && !b.loaded &&
         b.pending.empty() && b.status == 'I' && lost_in_transaction_.empty() &&
         static_cast<size_t>(b.node) < topology.nodes.size() && !topology.nodes[b.node].Lost();
}

awaitable<void> ClientSession::EndBackends() {
  // Say goodbye to the servers properly (or reset them for the next session), then wait for
  // every reader to finish.
  std::string terminate;
  protocol::MessageWriter(&terminate).Begin('X').End();
  std::string reset;
  AppendQuery(&reset, "DISCARD ALL");
  const bool pooling = config_->pool.mode == config::PoolMode::kSession;
  std::shared_ptr<const health::Topology> topology = worker_.Topology(*ctx_.monitor);
  bool resetting = false;
  if (pooling && pid_ != 0) {
    // From now on a CancelRequest with this session's key finds nothing: its connections may
    // soon serve another session.
    ctx_.cancels->Unregister(pid_);
    pid_ = 0;
  }
  for (auto& b : backends_) {
    if (!b || !b->alive || !b->conn->socket().is_open()) continue;
    if (pooling && Reusable(*b, *topology)) {
      // Its reader swallows the reply and stops after it (ReadBackend), leaving the
      // connection with no read under way and nothing buffered.
      b->resetting = true;
      resetting = true;
      PushSwallowed(b.get());
      const asio::const_buffer discard(reset.data(), reset.size());
      auto [ec, n] = co_await b->conn->transport().Write(discard);
      if (ec) b->conn->transport().Close();
      continue;
    }
    const asio::const_buffer bye(terminate.data(), terminate.size());
    co_await b->conn->transport().Write(bye);
  }
  CloseAll(/*keep_resetting=*/true);
  Watchdog watchdog(client_.get_executor());
  if (resetting) {
    // A node that does not answer DISCARD ALL in time is not worth keeping.
    watchdog.Arm(config_->limits.connect_timeout, [this] { CloseAll(); });
  }
  while (readers_ > 0) co_await readers_done_.Wait();
  watchdog.Disarm();
  for (auto& b : backends_) {
    if (!b || !b->resetting || !b->reset_ok || !b->conn->socket().is_open()) continue;
    CountBackend(b.get(), false);
    worker_.backends.Park(b->node, std::move(b->pool_key), std::move(b->conn),
                          static_cast<size_t>(config_->pool.max_idle));
    b.reset();
  }
  CloseAll();
}

awaitable<bool> ClientSession::ClientPump() {
  FrameScanner scanner(config_->limits.max_message_size);
  for (int t = 0; t < 256; ++t) {
    if (t != 'd') scanner.Inspect(static_cast<char>(t));  // CopyData streams through
  }
  asio::steady_timer idle_timer(client_.get_executor());
  const auto idle_limit = config_->limits.client_idle_timeout;
  for (;;) {
    size_t needed = 0;
    for (;;) {
      FrameScanner::Frame f = scanner.Next(client_buf_.Unconsumed());
      if (f.kind == FrameScanner::Kind::kWhole && scanner.inspected(f.type)) {
        // Most messages are relayed without waiting (and without a coroutine frame); the rest,
        // and everything that has to wait, take OnClientMessage.
        bool go_on;
        if (RelayNow(f.type, f.bytes)) {
          if (batch_.bytes.size() > kMaxHeldBatch) co_await SendBatch(false, true);
          go_on = !ending_;
        } else {
          go_on = co_await OnClientMessage(f.type, f.bytes);
        }
        client_buf_.Consume(f.bytes.size());
        if (!go_on || ending_) co_return false;
        continue;
      }
      if (f.kind == FrameScanner::Kind::kWhole || f.kind == FrameScanner::Kind::kPartial) {
        outbox_.append(f.bytes);  // CopyData: to the backend in COPY mode
        client_buf_.Consume(f.bytes.size());
        continue;
      }
      if (f.kind == FrameScanner::Kind::kNeedMore) {
        needed = f.needed;
        break;
      }
      co_await Flush();
      if (f.kind == FrameScanner::Kind::kBadLength) {
        PGRELAY_LOG(kWarning, "session", "client " << peer_ << ": invalid message length");
        co_await SendFatal(sqlstate::kProtocolViolation, "invalid message length");
      } else {
        PGRELAY_LOG(kWarning, "session",
                    "client " << peer_ << ": message exceeds max_message_size");
        const std::string message = "message exceeds the maximum size of " +
                                    std::to_string(config_->limits.max_message_size) + " bytes";
        co_await SendFatal(sqlstate::kProgramLimitExceeded, message,
                           "Send a smaller message or raise limits.max_message_size.");
      }
      co_return false;
    }
    if (!FlushNow()) co_await Flush();
    if (ending_) co_return false;
    if (client_buf_.Unconsumed().empty()) client_buf_.ShrinkIfIdle();
    client_buf_.MakeRoom(needed);
    auto buffer = asio::buffer(client_buf_.WritePtr(), client_buf_.WritableSize());
    const char* message_start = scanner.in_message() ? nullptr : client_buf_.Unconsumed().data();
    if (idle_limit.count() > 0) {
      using namespace asio::experimental::awaitable_operators;
      idle_timer.expires_after(idle_limit);
      auto r = co_await (client_.RelayRead(buffer, message_start, RelayPeer::kClient) ||
                         idle_timer.async_wait(kNoThrow));
      if (r.index() == 1) {
        if (tx_status_ == 'I' && !ending_) {
          co_await SendFatal(sqlstate::kIdleSessionTimeout,
                             "terminating connection due to idle-session timeout");
          co_return false;
        }
        continue;
      }
      auto [ec, n] = std::get<0>(r);
      if (ec) co_return false;
      client_buf_.Commit(n);
      worker_.metrics->Inc(ctx_.metrics->client_bytes_received.At(), n);
    } else {
      auto [ec, n] = co_await client_.RelayRead(buffer, message_start, RelayPeer::kClient);
      if (ec) co_return false;
      client_buf_.Commit(n);
      worker_.metrics->Inc(ctx_.metrics->client_bytes_received.At(), n);
    }
  }
}

awaitable<bool> ClientSession::OnClientMessage(char type, std::string_view msg) {
  if (IsHeld(type)) {
    BufferMessage(type, msg);
    if (batch_.bytes.size() > kMaxHeldBatch) co_await SendBatch(false, true);
    co_return !ending_;
  }
  switch (type) {
    case 'Q': {
      if (!batch_.empty()) co_await SendBatch(/*final=*/false, /*forced=*/true);
      Query q = PrepareQuery(msg);
      if (co_await HandlePgrelayCommand(q.sql, q.c)) co_return !ending_;
      Backend* b = co_await Choose(q.traits);
      if (b == nullptr) co_return !ending_;
      if (!co_await SwitchTo(b)) co_return false;
      SendQuery(b, msg, q);
      co_return true;
    }
    case 'H':
      batch_.bytes.append(msg);
      co_await SendBatch(/*final=*/false, /*forced=*/false);
      break;
    case 'S':
      batch_.bytes.append(msg);
      co_await SendBatch(/*final=*/true, /*forced=*/false);
      break;
    case 'F': {  // FunctionCall: a function may write
      if (!batch_.empty()) co_await SendBatch(false, true);
      routing::UnitTraits traits;
      traits.write = true;
      Backend* b = co_await Choose(traits);
      if (b == nullptr) co_return !ending_;
      if (!co_await SwitchTo(b)) co_return false;
      outbox_.append(msg);
      PushForward(b, traits, true);
      break;
    }
    case 'X':
      co_return false;
    default: {
      const std::string message =
          "invalid frontend message type " + std::to_string(static_cast<unsigned char>(type));
      PGRELAY_LOG(kWarning, "session", "client " << peer_ << ": " << message);
      co_await Flush();
      co_await SendFatal(sqlstate::kProtocolViolation, message);
      co_return false;
    }
  }
  if (batch_.bytes.size() > kMaxHeldBatch) co_await SendBatch(false, true);
  co_return !ending_;
}

bool ClientSession::RelayNow(char type, std::string_view msg) {
  routed_.reset();
  if (IsHeld(type)) {
    BufferMessage(type, msg);
    return true;
  }
  switch (type) {
    case 'Q': {
      if (!batch_.empty()) return false;
      Query q = PrepareQuery(msg);
      if (ParsePgrelayCommand(q.sql, q.c).kind != PgrelayCommand::Kind::kNone) return false;
      Backend* b = ChooseNow(q.traits);
      if (b == nullptr || !SwitchNow(b)) return false;
      TakeRoute();
      SendQuery(b, msg, q);
      return true;
    }
    case 'S': {
      Backend* b = batch_.sticky;
      const bool chosen = b == nullptr;
      if (chosen) {
        b = batch_.failed ? nullptr : BatchHome();
        if (b == nullptr && !batch_.failed) b = ChooseNow(batch_.traits);
        if (b == nullptr || !SwitchNow(b)) return false;
        TakeRoute();
      }
      batch_.bytes.append(msg);
      if (chosen) AppendReplay(b, &batch_.statements, &batch_.stale);
      SendBatchTo(b, /*final=*/true);
      return true;
    }
    default:
      return false;
  }
}

ClientSession::Query ClientSession::PrepareQuery(std::string_view msg) {
  protocol::MessageReader r(msg.substr(5));
  Query q;
  q.sql = r.CString();
  q.c = Classify(q.sql);
  if (config_ != worker_.config && !InTransaction()) AdoptConfig();  // SHOW pgrelay.* sees it
  q.traits = TraitsOf(q.c);
  unit_statements_.clear();
  unit_stale_.clear();
  StatementsUsed(q.c, &unit_statements_, &unit_stale_);
  if (q.c.Has(routing::Flag::kExecute) && q.c.statement_count == 1 && !unit_statements_.empty()) {
    // EXECUTE runs where its prepared statement may run.
    const SessionState::Prepared* p = state_.FindPrepared(unit_statements_.front());
    q.traits.write = p == nullptr || p->traits.write;
  }
  return q;
}

void ClientSession::SendQuery(Backend* b, std::string_view msg, const Query& q) {
  AppendReplay(b, &unit_statements_, &unit_stale_);
  outbox_.append(msg);
  PushForward(b, q.traits, !q.c.Has(routing::Flag::kEmpty));
  NoteStatementEffects(q.sql, q.c, b);
}

void ClientSession::BufferMessage(char type, std::string_view msg) {
  protocol::MessageReader r(msg.substr(5));
  switch (type) {
    case 'P': {
      std::string_view name = r.CString();
      std::string_view sql = r.CString();
      routing::Classification c = Classify(sql);
      routing::UnitTraits traits = TraitsOf(c);
      batch_.traits.Merge(traits);
      batch_.has_statement = true;
      const bool effects = HasEffects(c);
      if (name.empty()) {
        batch_.has_parse_unnamed = true;
        if (effects) batch_.unnamed_effect.emplace(std::string(sql), c);
      } else {
        if (state_.FindPrepared(name) == nullptr) batch_.stale.emplace_back(name);
        state_.DefinePrepared(name, /*sql=*/false, msg, traits, effects ? &c : nullptr, sql);
        batch_.defined.emplace_back(name);
      }
      batch_.bytes.append(msg);
      break;
    }
    case 'B': {
      r.CString();  // portal
      std::string_view statement = r.CString();
      NoteStatementUse(statement, /*executes=*/true);
      batch_.bytes.append(msg);
      break;
    }
    case 'D': {
      char what = r.Byte();
      std::string_view name = r.CString();
      if (what == 'S') NoteStatementUse(name, /*executes=*/false);
      batch_.bytes.append(msg);
      break;
    }
    case 'C': {
      char what = r.Byte();
      std::string_view name = r.CString();
      if (what == 'S' && !name.empty()) {
        state_.Deallocate(name);
        batch_.closed.emplace_back(name);
      }
      batch_.bytes.append(msg);
      break;
    }
    case 'E':
      batch_.has_execute = true;
      batch_.bytes.append(msg);
      break;
    case 'c':  // CopyDone / CopyFail: to the backend in COPY mode
    case 'f':
      outbox_.append(msg);
      break;
    default:
      break;
  }
}

routing::Classification ClientSession::Classify(std::string_view sql) {
  routing::Classification c = worker_.classifier.Classify(sql);
  const routing::Classifier::Stats& stats = worker_.classifier.stats();
  const admin::ProxyMetrics& pm = *ctx_.metrics;
  worker_.metrics->Set(pm.classifier_cache_hits.At(), stats.hits);
  worker_.metrics->Set(pm.classifier_cache_misses.At(), stats.misses);
  return c;
}

void ClientSession::NoteStatementUse(std::string_view name, bool executes) {
  batch_.has_statement = true;
  if (name.empty()) {
    if (!batch_.has_parse_unnamed) batch_.uses_unnamed_without_parse = true;
    if (executes && batch_.unnamed_effect) batch_.effects.push_back(*batch_.unnamed_effect);
    return;
  }
  const SessionState::Prepared* p = state_.FindPrepared(name);
  if (executes && p != nullptr && p->effect) batch_.effects.emplace_back(p->effect_sql, *p->effect);
  for (const auto& d : batch_.defined) {
    if (d == name) return;
  }
  // A name the session does not have (closed, deallocated) is listed too: the target must not
  // answer from a leftover copy.
  if (p != nullptr) batch_.traits.Merge(p->traits);
  batch_.statements.emplace_back(name);
}

ClientSession::Backend* ClientSession::BatchHome() {
  if (batch_.uses_unnamed_without_parse && unnamed_home_ && unnamed_home_->alive &&
      (current_ == nullptr || current_->forward_pending == 0 || current_ == unnamed_home_)) {
    return unnamed_home_;  // the unnamed statement lives there
  }
  if (!batch_.has_statement && current_ && current_->alive) {
    return current_;  // nothing to route by (a bare Sync, Describe of a portal): stay
  }
  return nullptr;
}

awaitable<void> ClientSession::SendBatch(bool final, bool forced) {
  Backend* b = batch_.sticky;
  if (b == nullptr) {
    if (batch_.failed) {
      // Routing failed at a Flush: the error was sent; answer the Sync and drop the rest.
      if (final) co_await RespondReady();
      batch_.Clear();
      co_return;
    }
    b = BatchHome();
    if (b == nullptr) b = co_await Choose(batch_.traits, /*respond_ready=*/final);
    if (b == nullptr) {
      if (!final)
        batch_.failed = true;
      else
        batch_.Clear();
      co_return;
    }
    if (!co_await SwitchTo(b)) co_return;
    AppendReplay(b, &batch_.statements, &batch_.stale);
  }
  SendBatchTo(b, final);
  if (!final && !forced) co_await Flush();
}

void ClientSession::SendBatchTo(Backend* b, bool final) {
  for (const auto& name : batch_.closed) b->prepared.erase(name);
  for (const auto& name : batch_.defined) {
    if (const SessionState::Prepared* p = state_.FindPrepared(name)) b->prepared[name] = p->id;
  }
  batch_.closed.clear();
  batch_.defined.clear();
  batch_.statements.clear();
  if (batch_.has_parse_unnamed) unnamed_home_ = b;
  outbox_.append(batch_.bytes);
  batch_.bytes.clear();
  if (!batch_.group_pushed) {
    // Counted as a statement only if it executes something (not a bare Parse/Describe).
    PushForward(b, batch_.traits, batch_.has_statement && batch_.has_execute);
    batch_.group_pushed = true;
  }
  for (const auto& [sql, c] : batch_.effects) NoteStatementEffects(sql, c, b);
  batch_.effects.clear();
  if (final) {
    batch_.Clear();
  } else {
    batch_.sticky = b;
  }
}

awaitable<ClientSession::Backend*> ClientSession::Choose(const routing::UnitTraits& traits,
                                                         bool respond_ready) {
  // Inside a transaction everything stays on the transaction's backend. While replies are
  // outstanding the predicted state counts (the client may pipeline BEGIN and more).
  if (InTransaction()) co_return current_;
  if (ctx_.pause != nullptr && ctx_.pause->Paused()) co_await WaitWhilePaused();
  if (config_ != worker_.config) AdoptConfig();  // a reload (we are between transactions)
  // Read-your-writes and quorum: a read pipelined behind the session's own writes runs after
  // them, where they run.
  if (Consistent() && writes_in_flight_ > 0 && current_ && current_->alive) co_return current_;

  // A copy: the worker's topology may be refreshed while this waits.
  std::shared_ptr<const health::Topology> topology = worker_.Topology(*ctx_.monitor);
  const routing::SessionRouting session = Routing();
  if (Backend* keep = KeepPipelining(traits, session, *topology)) co_return keep;
  routing::RouteResult route;
  if (routed_) {  // RelayNow asked the load balancer already; asking again would skip a node
    route = *routed_;
    routed_.reset();
  } else if (Consistent() && !worker_.router.NeedsPrimary(traits, session)) {
    route = co_await RouteConsistent(traits, session, &topology);
  } else {
    route = worker_.router.Route(traits, session, *topology, worker_.in_flight);
  }
  if (route.fell_back) worker_.metrics->Inc(ctx_.metrics->reads_fallback_primary.At());
  NoteRoute(route);
  Backend* b = nullptr;
  if (route.node >= 0) {
    b = backends_[route.node].get();
    if (b == nullptr || !b->alive) b = co_await OpenBackend(route.node);
    if (b == nullptr && !route.to_primary && config_->routing.fallback_to_primary &&
        topology->primary >= 0) {
      Backend* p = backends_[topology->primary].get();
      if (p && p->alive) {
        b = p;
      } else {
        b = co_await OpenBackend(topology->primary);
      }
    }
  }
  if (b == nullptr && route.to_primary && !ending_ &&
      config_->failover.mode != config::FailoverMode::kOff &&
      config_->failover.hold_writes.count() > 0) {
    b = co_await HoldForPrimary(traits, session, &topology);
    if (b == nullptr) route = worker_.router.Route(traits, session, *topology, worker_.in_flight);
  }
  if (b == nullptr && !ending_) {
    std::string message = route.error ? route.error : "pgrelay could not connect to a node";
    if (route.node >= 0 && !last_connect_error_.empty()) message += ": " + last_connect_error_;
    if (route.node < 0 && route.to_primary) message = NoPrimaryMessage(*topology);
    co_await RespondError(sqlstate::kUnableToConnect, message, respond_ready);
  }
  co_return b;
}

ClientSession::Backend* ClientSession::ChooseNow(const routing::UnitTraits& traits) {
  if (InTransaction()) return current_;
  if (ctx_.pause != nullptr && ctx_.pause->Paused()) return nullptr;
  if (config_ != worker_.config) AdoptConfig();
  if (Consistent() && writes_in_flight_ > 0 && current_ && current_->alive) return current_;
  const health::Topology& topology = *worker_.Topology(*ctx_.monitor);
  const routing::SessionRouting session = Routing();
  if (Backend* keep = KeepPipelining(traits, session, topology)) return keep;
  if (Consistent() && !worker_.router.NeedsPrimary(traits, session)) return nullptr;
  routed_ = worker_.router.Route(traits, session, topology, worker_.in_flight);
  NoteRoute(*routed_);
  if (routed_->node < 0) return nullptr;
  Backend* b = backends_[routed_->node].get();
  if (b == nullptr || !b->alive) return nullptr;
  return b;
}

void ClientSession::TakeRoute() {
  if (routed_ && routed_->fell_back) {
    worker_.metrics->Inc(ctx_.metrics->reads_fallback_primary.At());
  }
  routed_.reset();
}

ClientSession::Backend* ClientSession::KeepPipelining(const routing::UnitTraits& traits,
                                                      const routing::SessionRouting& session,
                                                      const health::Topology& topology) {
  // Keep a pipelining client on its backend when that backend is as good a target (not under
  // quorum: every read needs its own read index).
  const bool pending = current_ && current_->forward_pending > 0;
  if (!pending || !current_->alive || strategy_ == config::Strategy::kQuorum) return nullptr;
  const bool current_is_primary = current_->node == topology.primary;
  const bool needs_primary = worker_.router.NeedsPrimary(traits, session);
  const bool keep = current_is_primary ? needs_primary
                                       : !needs_primary && worker_.router.EligibleReplica(
                                                               topology, current_->node);
  return keep ? current_ : nullptr;
}

bool ClientSession::InTransaction() const {
  const bool pending = current_ && current_->forward_pending > 0;
  const bool in_tx = pending ? tx_predicted_ : tx_status_ != 'I';
  return in_tx && current_ && current_->alive;
}

void ClientSession::AdoptConfig() {
  const config::Strategy before = strategy_;
  config_ = worker_.config;
  strategy_ = config_->StrategyFor(database_, user_, application_name_);
  if (strategy_ != before) {
    PGRELAY_LOG(kDebug, "session",
                "client " << peer_ << ": strategy " << config::ToString(before) << " -> "
                          << config::ToString(strategy_) << " after a config reload");
  }
}

awaitable<void> ClientSession::WaitWhilePaused() {
  asio::steady_timer timer(client_.get_executor());
  while (!ending_ && ctx_.pause->Paused()) {
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(kNoThrow);
  }
}

awaitable<ClientSession::Backend*> ClientSession::HoldForPrimary(
    const routing::UnitTraits& traits, const routing::SessionRouting& session,
    std::shared_ptr<const health::Topology>* topology) {
  // The primary is gone or unreachable and pgrelay may be failing over: hold the statement
  // (failover.hold_writes) until a primary answers, instead of failing it at once.
  PGRELAY_LOG(kInfo, "session",
              "client " << peer_ << ": no primary reachable; holding the "
                        << "statement up to " << config_->failover.hold_writes.count() << " ms");
  const auto deadline = std::chrono::steady_clock::now() + config_->failover.hold_writes;
  asio::steady_timer timer(client_.get_executor());
  // A node that just refused is tried again only after a while (it is probably the failed
  // primary the monitor has not declared down yet).
  int refused = -1;
  auto refused_at = std::chrono::steady_clock::now();
  while (!ending_ && std::chrono::steady_clock::now() < deadline) {
    timer.expires_after(std::chrono::milliseconds(50));
    co_await timer.async_wait(kNoThrow);
    *topology = ctx_.monitor->Snapshot();
    routing::RouteResult route =
        worker_.router.Route(traits, session, **topology, worker_.in_flight);
    if (route.node < 0 || !route.to_primary) continue;
    Backend* b = backends_[route.node].get();
    if (b != nullptr && b->alive) co_return b;
    const auto now = std::chrono::steady_clock::now();
    if (route.node == refused && now - refused_at < config_->health.interval) continue;
    b = co_await OpenBackend(route.node);
    if (b != nullptr) co_return b;
    refused = route.node;
    refused_at = now;
  }
  co_return nullptr;
}

awaitable<ClientSession::Backend*> ClientSession::OpenBackend(int node) {
  // One login per node at a time: a caller that finds one under way (the warm-up's) waits for
  // it and takes its connection.
  while (LoginUnderWay(node)) co_await logins_done_.Wait();
  auto& slot = backends_[node];
  if (slot && slot->alive) co_return slot.get();
  if (ending_) co_return nullptr;
  if (slot && slot->reader_running) {
    error_code ignored;
    slot->conn->socket().close(ignored);
    while (slot->reader_running) co_await readers_done_.Wait();
  }
  if (slot && current_ == slot.get()) current_ = nullptr;
  if (slot && unnamed_home_ == slot.get()) unnamed_home_ = nullptr;
  if (slot) CountBackend(slot.get(), false);
  auto topology = ctx_.monitor->Snapshot();
  const health::NodeStatus& status = topology->nodes[node];
  BackendLoginParams params = LoginParamsFor(status);
  auto b = std::make_unique<Backend>();
  b->node = node;
  if (ending_) co_return nullptr;  // the client left while the old connection's reader ended
  b->conn = FromPool(params, status, b.get());
  bool ok = true;
  if (b->conn == nullptr) {
    b->conn = std::make_unique<BackendConnection>(client_.get_executor(), &worker_.pool);
    BackendConnection* login = b->conn.get();
    logins_.push_back(Login{node, login});
    ok = co_await login->Login(params);
    std::erase_if(logins_, [login](const Login& l) { return l.conn == login; });
    logins_done_.Notify();
  }
  BackendConnection* conn = b->conn.get();
  if (ending_) co_return nullptr;  // CloseAll ended the login, or it finished too late
  if (!ok) {
    worker_.metrics->Inc(ctx_.metrics->backend_connect_failures.At(static_cast<size_t>(node)));
    last_connect_error_ = conn->error_message();
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << ": could not open a connection to node " << status.name
                          << ": " << last_connect_error_);
    co_return nullptr;
  }
  if (cancel_slot_) cancel_slot_->SetTarget(node, CancelTargetOf(*conn));
  slot = std::move(b);
  CountBackend(slot.get(), true);
  StartReader(slot.get());
  co_return slot.get();
}

bool ClientSession::LoginUnderWay(int node) const {
  for (const Login& login : logins_) {
    if (login.node == node) return true;
  }
  return false;
}

void ClientSession::StartWarmUp() {
  if (strategy_ == config::Strategy::kLeader || config_->routing.lazy_connect) return;
  ++readers_;
  asio::co_spawn(client_.get_executor(), WarmUp(), asio::detached);
}

awaitable<void> ClientSession::WarmUp() {
  try {
    co_await WarmUpReplicas();
  } catch (const std::exception& e) {
    PGRELAY_LOG(kError, "session", "client " << peer_ << ": internal error: " << e.what());
  }
  --readers_;
  readers_done_.Notify();
}

awaitable<void> ClientSession::WarmUpReplicas() {
  // The replicas this session's reads will go to: with replica_affinity session the one the
  // balancer gives it now (its reads then stay there); without, every eligible replica, since
  // reads are balanced over all of them (Pgpool-II and MaxScale connect to every node too).
  std::shared_ptr<const health::Topology> topology = worker_.Topology(*ctx_.monitor);
  const routing::UnitTraits read;
  const routing::SessionRouting session = Routing();
  if (worker_.router.NeedsPrimary(read, session)) co_return;
  std::vector<int> nodes;
  if (config_->routing.replica_affinity == config::ReplicaAffinity::kSession) {
    const routing::RouteResult route =
        worker_.router.Route(read, session, *topology, worker_.in_flight);
    if (route.node < 0 || route.to_primary) co_return;
    NoteRoute(route);
    nodes.push_back(route.node);
  } else {
    for (int r : topology->replicas) {
      if (worker_.router.EligibleReplica(*topology, r)) nodes.push_back(r);
    }
  }
  for (int node : nodes) {
    const Backend* b = backends_[node].get();
    if (b != nullptr && b->alive) continue;  // the first read got there first
    // A failure is logged and counted; a read routed there tries again, as with lazy_connect.
    Backend* opened = co_await OpenBackend(node);
    if (ending_) co_return;
    if (opened == nullptr) continue;
    // The health checks may have dropped the node while the login ran (the topology watcher
    // closes only the connections that existed then).
    if (worker_.Topology(*ctx_.monitor)->nodes[node].Lost()) {
      DropNode(node, "was lost while pgrelay logged in to it");
    }
  }
}

void ClientSession::StartReader(Backend* b) {
  b->reader_running = true;
  ++readers_;
  asio::co_spawn(client_.get_executor(), BackendReader(b), asio::detached);
}

bool ClientSession::SwitchNow(Backend* b) {
  if (current_ == b) return true;
  if (!FlushNow()) return false;
  if (current_ && current_->alive && current_->forward_pending > 0) return false;
  current_ = b;
  UpdateCancelTarget();
  return true;
}

awaitable<bool> ClientSession::SwitchTo(Backend* b) {
  if (!SwitchNow(b)) {
    co_await Flush();
    // Replies must reach the client in order: let the previous backend finish first.
    co_await WaitCurrentDone();
    current_ = b;
    UpdateCancelTarget();
  }
  co_return !ending_;
}

void ClientSession::UpdateCancelTarget() {
  if (cancel_slot_) cancel_slot_->SetCurrent(current_->node);
}

void ClientSession::AppendReplay(Backend* b, const std::vector<std::string>* statements,
                                 const std::vector<std::string>* stale) {
  if (stale != nullptr) {
    for (const std::string& name : *stale) {
      if (b->prepared.erase(name) == 0) continue;
      AppendQuery(&outbox_, "DEALLOCATE " + QuoteIdent(name));
      PushSwallowed(b);
    }
  }
  if (b->state_version != state_.settings_version()) {
    // One query per setting: a setting that fails to replay does not stop the others.
    AppendQuery(&outbox_, "RESET ALL");
    PushSwallowed(b);
    for (const auto& [name, statement] : state_.settings()) {
      AppendQuery(&outbox_, statement);
      PushSwallowed(b);
    }
    b->state_version = state_.settings_version();
  }
  if (statements == nullptr) return;
  for (const std::string& name : *statements) {
    const SessionState::Prepared* p = state_.FindPrepared(name);
    auto it = b->prepared.find(name);
    if (p == nullptr) {
      if (it == b->prepared.end()) continue;
      b->prepared.erase(it);  // closed by the session: drop the leftover copy here
      AppendQuery(&outbox_, "DEALLOCATE " + QuoteIdent(name));
      PushSwallowed(b);
      continue;
    }
    if (it != b->prepared.end() && it->second == p->id) continue;
    if (it != b->prepared.end()) {  // an older definition under the same name
      AppendQuery(&outbox_, "DEALLOCATE " + QuoteIdent(name));
      PushSwallowed(b);
    }
    if (p->sql) {
      AppendQuery(&outbox_, p->definition);
    } else {
      outbox_.append(p->definition);
      AppendSync(&outbox_);
    }
    PushSwallowed(b);
    b->prepared[name] = p->id;
  }
}

void ClientSession::PushForward(Backend* b, const routing::UnitTraits& traits, bool statement) {
  Group g;
  g.sent = std::chrono::steady_clock::now();
  g.forward = true;
  g.commit = traits.commits;
  g.write = traits.write;
  if (g.write) ++writes_in_flight_;
  g.status_before = tx_status_;
  b->pending.push_back(g);
  ++b->forward_pending;
  ++worker_.in_flight[b->node];
  const admin::ProxyMetrics& pm = *ctx_.metrics;
  admin::StatementClass cls = !statement ? admin::StatementClass::kOther
                              : traits.begin || traits.tx_after != routing::TxAfter::kUnchanged
                                  ? admin::StatementClass::kTransaction
                              : traits.write ? admin::StatementClass::kWrite
                                             : admin::StatementClass::kRead;
  worker_.metrics->Inc(pm.statements.At(static_cast<size_t>(b->node), cls, strategy_));
  if (traits.tx_after == routing::TxAfter::kInTransaction) tx_predicted_ = true;
  if (traits.tx_after == routing::TxAfter::kIdle) tx_predicted_ = false;
}

void ClientSession::PushSwallowed(Backend* b) {
  Group g;
  g.forward = false;
  b->pending.push_back(g);
}

bool ClientSession::FlushNow() {
  if (outbox_.empty()) return true;
  if (current_ == nullptr || !current_->alive) {
    outbox_.clear();
    return true;
  }
  error_code ec;
  const size_t n = current_->conn->transport().WriteNow(asio::buffer(outbox_), ec);
  if (ec) {
    BackendWriteFailed(current_, ec);
    outbox_.clear();
    return true;
  }
  if (n == outbox_.size()) {
    outbox_.clear();
    return true;
  }
  outbox_.erase(0, n);  // the rest waits for room (Flush)
  return false;
}

awaitable<bool> ClientSession::Flush() {
  if (FlushNow()) co_return !ending_;
  const asio::const_buffer data(outbox_.data(), outbox_.size());
  Backend* b = current_;
  auto [ec, n] = co_await b->conn->transport().Write(data);
  outbox_.clear();
  if (ec) BackendWriteFailed(b, ec);
  co_return !ending_;
}

void ClientSession::BackendWriteFailed(Backend* b, const error_code& ec) {
  // The connection is broken. Its reader may be waiting without trying the socket (a reset
  // that came with the last reply is not reported again, proxy/relay_read.h): close it, and
  // the reader answers the client (OnBackendLost).
  PGRELAY_LOG(kDebug, "session",
              "client " << peer_ << ": write to backend failed: " << ec.message());
  if (b->alive && b->dropped == nullptr) CloseBackend(b, "failed a write (connection broken)");
}

void ClientSession::CloseBackend(Backend* b, const char* why) {
  b->dropped = why;
  error_code ignored;
  b->conn->socket().cancel(ignored);
  b->conn->socket().close(ignored);
}

size_t ClientSession::RepliesOwed(const void* backend) {
  return static_cast<const Backend*>(backend)->pending.size();
}

awaitable<void> ClientSession::WaitCurrentDone() {
  while (current_ && current_->alive && current_->forward_pending > 0 && !ending_) {
    co_await switch_signal_.Wait();
  }
}

bool ClientSession::WriteToClientNow(std::vector<asio::const_buffer>& buffers, bool* failed) {
  *failed = false;
  if (client_writing_) return false;  // another write is under way: after it
  error_code ec;
  size_t n = client_.WriteNow(buffers, ec);
  if (ec) {
    ending_ = true;
    CloseAll();
    *failed = true;
    return true;
  }
  if (n == 0) return false;
  worker_.metrics->Inc(ctx_.metrics->client_bytes_sent.At(), n);
  // Drop what was written from the front; the rest (if any) goes by WriteToClient.
  size_t i = 0;
  while (i < buffers.size() && n >= buffers[i].size()) n -= buffers[i++].size();
  if (i == buffers.size()) return true;
  buffers.erase(buffers.begin(), buffers.begin() + static_cast<std::ptrdiff_t>(i));
  buffers.front() += n;
  return false;
}

awaitable<bool> ClientSession::WriteToClient(const std::vector<asio::const_buffer>& buffers) {
  while (client_writing_) co_await client_write_free_.Wait();
  client_writing_ = true;
  auto [ec, n] = co_await client_.Write(buffers);
  worker_.metrics->Inc(ctx_.metrics->client_bytes_sent.At(), n);
  client_writing_ = false;
  client_write_free_.Notify();
  if (ec) {
    ending_ = true;
    CloseAll();
    co_return false;
  }
  co_return true;
}

awaitable<void> ClientSession::RespondError(std::string_view code, std::string_view message,
                                            bool with_ready) {
  co_await Flush();
  co_await WaitCurrentDone();
  if (ending_) co_return;
  reply_.clear();
  protocol::AppendError(&reply_, "ERROR", code, message);
  if (with_ready) protocol::AppendReadyForQuery(&reply_, tx_status_);
  std::vector<asio::const_buffer> out{asio::buffer(reply_)};
  co_await WriteToClient(out);
}

awaitable<void> ClientSession::RespondReady() {
  co_await WaitCurrentDone();
  if (ending_) co_return;
  reply_.clear();
  protocol::AppendReadyForQuery(&reply_, tx_status_);
  std::vector<asio::const_buffer> out{asio::buffer(reply_)};
  co_await WriteToClient(out);
}

void ClientSession::OnGroupDone(Backend* b) {
  Group g = b->pending.front();
  b->pending.pop_front();
  b->status = g.status_after;
  if (b->resetting) {  // the DISCARD ALL of EndBackends
    b->reset_ok = !g.error && g.status_after == 'I';
    return;
  }
  if (!g.forward) {
    if (g.error) {
      PGRELAY_LOG(kWarning, "session",
                  "client " << peer_ << ": replaying session state on node " << b->conn->node_name()
                            << " failed");
    }
    return;
  }
  --b->forward_pending;
  --worker_.in_flight[b->node];
  worker_.metrics->Observe(
      ctx_.metrics->statement_duration.At(static_cast<size_t>(b->node)),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - g.sent).count());
  char before = tx_status_;
  tx_status_ = g.status_after;
  if (before != 'I' && tx_status_ == 'I') {
    state_.EndTransaction(g.commit && before == 'T' && !g.error);
  }
  if (g.write) {
    --writes_in_flight_;
    wrote_ = true;
  }
  if (wrote_ && tx_status_ == 'I') {
    wrote_ = false;
    if (Consistent()) NoteCommit();
  }
  if (b->forward_pending == 0) {
    tx_predicted_ = tx_status_ != 'I';
    switch_signal_.Notify();
  }
}

awaitable<void> ClientSession::BackendReader(Backend* b) {
  try {
    co_await ReadBackend(b);
  } catch (const std::exception& e) {
    PGRELAY_LOG(kError, "session", "client " << peer_ << ": internal error: " << e.what());
  }
  b->reader_running = false;
  --readers_;
  readers_done_.Notify();
}

awaitable<void> ClientSession::ReadBackend(Backend* b) {
  FrameScanner scanner(kMaxBackendMessage);
  for (char t : {'Z', 'E', 'A', 'N', 'S'}) scanner.Inspect(t);
  IoBuffer& in = b->conn->buffer();
  Transport& from = b->conn->transport();
  std::vector<asio::const_buffer> out;
  out.reserve(16);
  bool forward_current = false;  // decision for the message being streamed
  bool sent_status = false;      // status_sending_ is in `out`
  for (;;) {
    out.clear();
    size_t completed = 0;  // groups whose ReadyForQuery is in this chunk
    size_t needed = 0;
    bool corrupt = false;
    for (;;) {
      // Reset for the pool: nothing after DISCARD ALL's ReadyForQuery is read (see below).
      if (b->resetting && completed == b->pending.size()) break;
      FrameScanner::Frame f = scanner.Next(in.Unconsumed());
      if (f.kind == FrameScanner::Kind::kNeedMore) {
        needed = f.needed;
        break;
      }
      if (f.kind != FrameScanner::Kind::kWhole && f.kind != FrameScanner::Kind::kPartial) {
        corrupt = true;
        break;
      }
      std::string_view piece = f.bytes;
      if (f.kind == FrameScanner::Kind::kWhole || f.first_piece) {
        if (f.type == 'S' && f.kind == FrameScanner::Kind::kWhole && !b->pool_key.empty()) {
          b->conn->NoteParameterStatus(f.bytes);  // for the session that takes it next
        }
        Group* g = completed < b->pending.size() ? &b->pending[completed] : nullptr;
        if (g != nullptr) {
          forward_current = g->forward;
          if (f.kind == FrameScanner::Kind::kWhole && f.type == 'Z') {
            g->status_after = f.bytes.size() > 5 ? f.bytes[5] : 'I';
            ++completed;
          } else if (f.type == 'E') {
            g->error = true;
            if (g->forward && f.kind == FrameScanner::Kind::kWhole && RewriteFatal(b, f.bytes)) {
              piece = b->rewritten;
            }
          }
        } else {
          // Unsolicited: notifications, notices and parameter changes of the backend serving
          // the session reach the client; an error here is the server ending an idle
          // connection, which the session survives.
          forward_current = b == current_ && (f.type == 'A' || f.type == 'N' || f.type == 'S');
          if (f.type == 'E') {
            auto fields = protocol::ParseErrorFields(f.bytes.substr(5));
            PGRELAY_LOG(kInfo, "session",
                        "client " << peer_ << ": node " << b->conn->node_name()
                                  << " closed an idle connection: " << fields.message);
          }
        }
      }
      if (forward_current && f.type == 'Z' && f.kind == FrameScanner::Kind::kWhole &&
          !status_pending_.empty() && status_sending_.empty()) {
        // A ParameterStatus pgrelay has to tell (pgrelay.causal_lsn) goes at a message
        // boundary: before this ReadyForQuery.
        status_sending_.swap(status_pending_);
        Gather(out, status_sending_);
        sent_status = true;
      }
      if (forward_current) Gather(out, piece);
      in.Consume(f.bytes.size());
    }
    if (!out.empty()) {
      bool failed = false;
      if (!WriteToClientNow(out, &failed)) {
        if (!co_await WriteToClient(out)) co_return;
      } else if (failed) {
        co_return;
      }
    }
    if (sent_status) {
      status_sending_.clear();
      sent_status = false;
    }
    for (size_t i = 0; i < completed; ++i) OnGroupDone(b);
    if (corrupt) {
      OnBackendLost(b, "sent a malformed message");
      co_return;
    }
    if (b->resetting && b->pending.empty()) {
      // Reset for the pool (EndBackends): stop here, with no read under way. Anything after
      // the reply would belong to nobody: such a connection is not kept.
      b->reset_ok = b->reset_ok && in.Unconsumed().empty();
      co_return;
    }
    if (in.Unconsumed().empty()) in.ShrinkIfIdle();
    in.MakeRoom(needed);
    const asio::mutable_buffer space(in.WritePtr(), in.WritableSize());
    const char* message_start = scanner.in_message() ? nullptr : in.Unconsumed().data();
    auto [ec, n] = co_await from.RelayRead(space, message_start, RelayPeer::kServer,
                                           &ClientSession::RepliesOwed, b);
    if (ec) {
      if (!ending_) {
        const std::string why = b->dropped != nullptr    ? std::string(b->dropped)
                                : ec == asio::error::eof ? std::string("closed the connection")
                                                         : ec.message();
        OnBackendLost(b, why);
      }
      co_return;
    }
    in.Commit(n);
  }
}

bool ClientSession::RewriteFatal(Backend* b, std::string_view message) {
  // A server ending its connection mid-statement (admin shutdown, crash) sends FATAL. Outside a
  // transaction the session survives on a new connection, so the client must not read FATAL
  // ("connection dead"): relay it as an ERROR that says what happened.
  if (tx_status_ != 'I' || tx_predicted_) return false;
  protocol::ErrorFields fields = protocol::ParseErrorFields(message.substr(5));
  if (fields.severity != "FATAL" && fields.severity != "PANIC") return false;
  b->rewritten.clear();
  const std::string text = fields.message + " (pgrelay: the connection to node " +
                           b->conn->node_name() + " ended; the session continues)";
  protocol::AppendError(&b->rewritten, "ERROR", fields.code, text,
                        "The statement may or may not have run; check before retrying.");
  return true;
}

void ClientSession::DropNode(int node, const char* why) {
  if (node < 0 || static_cast<size_t>(node) >= backends_.size()) return;
  Backend* b = backends_[node].get();
  if (b == nullptr || !b->alive) return;
  CloseBackend(b, why);
}

void ClientSession::OnBackendLost(Backend* b, std::string_view why) {
  b->alive = false;
  CountBackend(b, false);
  error_code ignored;
  b->conn->socket().close(ignored);
  if (current_ == b && (tx_status_ != 'I' || tx_predicted_)) {
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << ": node " << b->conn->node_name() << " " << why
                          << " during a transaction");
    lost_in_transaction_ = b->conn->node_name();
  } else if (b->forward_pending > 0) {
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << ": node " << b->conn->node_name() << " " << why
                          << " while running a statement");
  } else {
    PGRELAY_LOG(
        kInfo, "session",
        "client " << peer_ << ": idle connection to node " << b->conn->node_name() << " " << why);
    b->pending.clear();
    return;
  }
  // Answer what the client is waiting for, in a detached step (we are inside the reader).
  asio::co_spawn(client_.get_executor(), AnswerLost(b), asio::detached);
}

awaitable<void> ClientSession::AnswerLost(Backend* b) {
  ++readers_;
  const std::string node = b->conn->node_name();
  if (!lost_in_transaction_.empty()) {
    reply_lost_.clear();
    protocol::AppendError(&reply_lost_, "FATAL", sqlstate::kConnectionFailure,
                          "pgrelay lost the connection to node " + node + " during a transaction",
                          "The transaction was rolled back by the server (if the node failed, "
                          "pgrelay may be failing over to another); reconnect and retry it.");
    std::vector<asio::const_buffer> out{asio::buffer(reply_lost_)};
    co_await WriteToClient(out);
    ending_ = true;
    CloseAll();
  } else {
    // Every statement still waiting on that node gets an error and its ReadyForQuery; the
    // session goes on with the next statement on a fresh connection.
    reply_lost_.clear();
    uint32_t n = b->forward_pending;
    uint32_t i = 0;
    bool lost_write = false;
    for (size_t k = 0; k < b->pending.size(); ++k) {
      const Group& g = b->pending[k];
      if (!g.forward) continue;
      if (i++ == n) break;
      if (g.write) {
        --writes_in_flight_;
        lost_write = true;
      }
      if (!g.error) {
        protocol::AppendError(
            &reply_lost_, "ERROR", sqlstate::kConnectionFailure,
            "pgrelay lost the connection to node " + node + " while running the statement",
            "The statement may or may not have run; check before retrying.");
      }
      protocol::AppendReadyForQuery(&reply_lost_, 'I');
    }
    worker_.in_flight[b->node] -= n;
    // A write whose outcome is unknown may have committed: later reads must see it if it did.
    if ((lost_write || wrote_) && Consistent()) NoteCommit();
    wrote_ = false;
    b->forward_pending = 0;
    b->pending.clear();
    tx_status_ = 'I';
    tx_predicted_ = false;
    if (current_ == b) current_ = nullptr;
    if (unnamed_home_ == b) unnamed_home_ = nullptr;
    std::vector<asio::const_buffer> out{asio::buffer(reply_lost_)};
    co_await WriteToClient(out);
    switch_signal_.Notify();
  }
  --readers_;
  readers_done_.Notify();
}

}  // namespace pgrelay::proxy
