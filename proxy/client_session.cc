#include "proxy/client_session.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <exception>
#include <variant>

#include "config/log.h"
#include "proxy/protocol/crypto_util.h"
#include "proxy/protocol/md5_auth.h"
#include "proxy/protocol/messages.h"
#include "proxy/protocol/scram.h"
#include "proxy/watchdog.h"

namespace pgrelay::proxy {

namespace {

using protocol::FrameScanner;
namespace sqlstate = protocol::sqlstate;

constexpr uint32_t kMaxAuthMessage = 10000;
// Backends are trusted to frame correctly; this only guards against a corrupt stream.
constexpr uint32_t kMaxBackendMessage = 0x7fffffff;

enum class Action { kForward, kStop };

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

std::string PeerName(const tcp::socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "?";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

bool IsTrue(std::string_view v) {
  return v == "1" || v == "true" || v == "on" || v == "yes" || v == "database";
}

}  // namespace

ClientSession::ClientSession(tcp::socket socket, ServerContext& context, BufferPool& pool)
    : ctx_(context),
      config_(*context.config),
      pool_(pool),
      client_(std::move(socket)),
      client_buf_(&pool),
      client_stream_(client_, client_buf_) {
  peer_ = PeerName(client_);
  error_code ignored;
  client_.set_option(tcp::no_delay(true), ignored);
}

ClientSession::~ClientSession() {
  if (pid_ != 0) ctx_.cancels->Unregister(pid_);
  if (counted_) ctx_.client_connections.fetch_sub(1, std::memory_order_relaxed);
}

void ClientSession::CloseAll() {
  error_code ignored;
  client_.close(ignored);
  if (backend_) backend_->socket().close(ignored);
}

awaitable<void> ClientSession::SendError(std::string_view severity, std::string_view code,
                                         std::string_view message, std::string_view hint) {
  scratch_.clear();
  protocol::AppendError(&scratch_, severity, code, message, hint);
  co_await client_stream_.Write(scratch_);
}

awaitable<void> ClientSession::SendFatal(std::string_view code, std::string_view message,
                                         std::string_view hint) {
  co_await SendError("FATAL", code, message, hint);
}

awaitable<void> ClientSession::Run() {
  try {
    if (co_await Startup()) co_await Relay();
  } catch (const std::exception& e) {
    PGRELAY_LOG(kError, "session", "client " << peer_ << ": internal error: " << e.what());
  }
  CloseAll();
  PGRELAY_LOG(kDebug, "session", "client " << peer_ << " disconnected");
}

awaitable<bool> ClientSession::Startup() {
  Watchdog watchdog(client_.get_executor());
  watchdog.Arm(config_.limits.startup_timeout, [this] { CloseAll(); });
  bool ok = co_await StartupSteps();
  watchdog.Disarm();
  if (watchdog.fired()) {
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << ": start-up and authentication took"
                          << " longer than startup_timeout, closed");
    co_return false;
  }
  if (!ok) co_return false;
  co_return co_await ConnectPrimary();
}

awaitable<bool> ClientSession::StartupSteps() {
  protocol::StartupPacket packet;
  bool ssl_answered = false;
  bool gss_answered = false;
  for (;;) {
    std::string_view body;
    ReadStatus st = co_await client_stream_.ReadStartup(&body, protocol::kMaxStartupPacketLength);
    if (st == ReadStatus::kClosed) co_return false;
    if (st != ReadStatus::kOk) {
      co_await SendFatal(sqlstate::kProtocolViolation, "invalid length of startup packet");
      co_return false;
    }
    packet = protocol::ParseStartupPacket(body);
    using Kind = protocol::StartupPacket::Kind;
    if (packet.kind == Kind::kSslRequest && !ssl_answered) {
      ssl_answered = true;  // TLS is not offered yet: the client goes on in plain text
      if (co_await client_stream_.Write("N")) co_return false;
      continue;
    }
    if (packet.kind == Kind::kGssEncRequest && !gss_answered) {
      gss_answered = true;
      if (co_await client_stream_.Write("N")) co_return false;
      continue;
    }
    if (packet.kind == Kind::kCancel) {
      co_await HandleCancel(packet.cancel_pid, packet.cancel_key);
      co_return false;
    }
    if (packet.kind != Kind::kStartup) {
      co_await SendFatal(sqlstate::kProtocolViolation,
                         packet.error.empty() ? "unexpected start-up packet" : packet.error);
      co_return false;
    }
    break;
  }

  const int major = packet.protocol >> 16;
  const int minor = packet.protocol & 0xffff;
  if (major != 3) {
    co_await SendFatal(sqlstate::kFeatureNotSupported,
                       "unsupported frontend protocol " + std::to_string(major) + "." +
                           std::to_string(minor) + ": server supports 3.0 to 3.0");
    co_return false;
  }
  std::vector<std::string> unknown_options;
  for (auto& [name, value] : packet.params) {
    if (name == "user") {
      user_ = value;
    } else if (name == "database") {
      database_ = value;
    } else if (name.starts_with("_pq_.")) {
      unknown_options.push_back(name);
    } else if (name == "replication") {
      if (IsTrue(value)) {
        co_await SendFatal(sqlstate::kFeatureNotSupported,
                           "pgrelay does not relay replication connections",
                           "Connect replication clients to a PostgreSQL node directly.");
        co_return false;
      }
    } else {
      forwarded_params_.emplace_back(name, value);
    }
  }
  if (user_.empty()) {
    co_await SendFatal(sqlstate::kInvalidAuthorization,
                       "no PostgreSQL user name specified in startup packet");
    co_return false;
  }
  if (database_.empty()) database_ = user_;
  if (minor > 0 || !unknown_options.empty()) {
    // NegotiateProtocolVersion: we speak 3.0 and none of the requested protocol options.
    scratch_.clear();
    protocol::MessageWriter w(&scratch_);
    w.Begin('v').Int32(protocol::kProtocolV3).Int32(static_cast<int32_t>(unknown_options.size()));
    for (const auto& o : unknown_options) w.CString(o);
    w.End();
    if (co_await client_stream_.Write(scratch_)) co_return false;
  }

  counted_ = true;
  int now = ctx_.client_connections.fetch_add(1, std::memory_order_relaxed) + 1;
  if (now > config_.limits.max_client_connections) {
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << " refused: max_client_connections ("
                          << config_.limits.max_client_connections << ") reached");
    co_await SendFatal(sqlstate::kTooManyConnections, "sorry, too many clients already",
                       "Raise limits.max_client_connections or use fewer connections.");
    co_return false;
  }
  co_return co_await Authenticate();
}

awaitable<bool> ClientSession::Authenticate() {
  auth_user_ = ctx_.auth->Find(user_);
  bool ok = false;
  switch (config_.auth) {
    case config::AuthMethod::kTrust:
      ok = true;
      break;
    case config::AuthMethod::kScramSha256:
      ok = co_await AuthenticateScram(auth_user_);
      break;
    case config::AuthMethod::kMd5:
      ok = co_await AuthenticateMd5(auth_user_);
      break;
  }
  if (!ok) co_return false;
  scratch_.clear();
  protocol::AppendAuthRequest(&scratch_, protocol::kAuthOk);
  co_return !co_await client_stream_.Write(scratch_);
}

awaitable<bool> ClientSession::AuthenticateScram(const AuthDirectory::User* user) {
  scratch_.clear();
  using namespace std::string_view_literals;
  protocol::AppendAuthRequest(&scratch_, protocol::kAuthSasl, "SCRAM-SHA-256\0\0"sv);
  if (co_await client_stream_.Write(scratch_)) co_return false;

  char type = 0;
  std::string_view body;
  // A client without a password closes here (psql then prompts and reconnects).
  if (co_await client_stream_.ReadMessage(&type, &body, kMaxAuthMessage) != ReadStatus::kOk)
    co_return false;
  protocol::MessageReader r(body);
  std::string_view mechanism = r.CString();
  int32_t len = r.Int32();
  std::string_view data = len >= 0 ? r.Bytes(static_cast<size_t>(len)) : std::string_view{};
  if (type != 'p' || !r.ok()) {
    co_await SendFatal(sqlstate::kProtocolViolation, "expected SASL response");
    co_return false;
  }
  if (mechanism != protocol::kScramMechanism) {
    co_await SendFatal(sqlstate::kProtocolViolation,
                       "client selected an invalid SASL authentication mechanism");
    co_return false;
  }
  protocol::ScramServer server(user ? &user->scram : nullptr);
  std::string reply;
  protocol::ScramStatus st = server.HandleClientFirst(data, &reply);
  if (st == protocol::ScramStatus::kOk) {
    scratch_.clear();
    protocol::AppendAuthRequest(&scratch_, protocol::kAuthSaslContinue, reply);
    if (co_await client_stream_.Write(scratch_)) co_return false;
    if (co_await client_stream_.ReadMessage(&type, &body, kMaxAuthMessage) != ReadStatus::kOk)
      co_return false;
    if (type != 'p') {
      co_await SendFatal(sqlstate::kProtocolViolation, "expected SASL response");
      co_return false;
    }
    st = server.HandleClientFinal(body, &reply);
  }
  if (st == protocol::ScramStatus::kMalformed) {
    co_await SendFatal(sqlstate::kProtocolViolation, "malformed SCRAM message");
    co_return false;
  }
  if (st != protocol::ScramStatus::kOk) {
    PGRELAY_LOG(kWarning, "auth",
                "client " << peer_ << ": password authentication failed for user \"" << user_
                          << "\"" << (user ? "" : " (unknown user)"));
    co_await SendFatal(sqlstate::kInvalidPassword,
                       "password authentication failed for user \"" + user_ + "\"");
    co_return false;
  }
  scratch_.clear();
  protocol::AppendAuthRequest(&scratch_, protocol::kAuthSaslFinal, reply);
  co_return !co_await client_stream_.Write(scratch_);
}

awaitable<bool> ClientSession::AuthenticateMd5(const AuthDirectory::User* user) {
  const std::string salt = protocol::RandomBytes(4);
  scratch_.clear();
  protocol::AppendAuthRequest(&scratch_, protocol::kAuthMd5, salt);
  if (co_await client_stream_.Write(scratch_)) co_return false;
  char type = 0;
  std::string_view body;
  if (co_await client_stream_.ReadMessage(&type, &body, kMaxAuthMessage) != ReadStatus::kOk)
    co_return false;
  protocol::MessageReader r(body);
  std::string_view response = r.CString();
  if (type != 'p' || !r.ok()) {
    co_await SendFatal(sqlstate::kProtocolViolation, "expected password response");
    co_return false;
  }
  if (user == nullptr || !protocol::Md5Verify(user_, user->password, salt, response)) {
    PGRELAY_LOG(kWarning, "auth",
                "client " << peer_ << ": password authentication failed for user \"" << user_
                          << "\"" << (user ? "" : " (unknown user)"));
    co_await SendFatal(sqlstate::kInvalidPassword,
                       "password authentication failed for user \"" + user_ + "\"");
    co_return false;
  }
  co_return true;
}

awaitable<bool> ClientSession::ConnectPrimary() {
  auto topology = ctx_.monitor->Snapshot();
  const health::NodeStatus* primary = topology->Primary();
  if (primary == nullptr) {
    co_await SendFatal(sqlstate::kCannotConnectNow, "pgrelay: no primary node is available",
                       "Check that the PostgreSQL nodes are running; pgrelay probes them every " +
                           std::to_string(config_.health.interval.count()) + " ms.");
    co_return false;
  }
  BackendLoginParams params;
  params.node_name = primary->name;
  params.host = primary->host;
  params.port = primary->port;
  if (config_.backend) {
    params.user = config_.backend->user;
    params.password = config_.backend->password;
  } else {
    params.user = user_;
    params.password = auth_user_ ? auth_user_->password : std::string();
  }
  params.database = database_;
  params.options = forwarded_params_;
  params.timeout = config_.limits.connect_timeout;

  backend_ = std::make_unique<BackendConnection>(client_.get_executor(), &pool_);
  if (!co_await backend_->Login(params)) {
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << ": backend login failed: " << backend_->error_message());
    if (!backend_->server_error().empty()) {
      co_await client_stream_.Write(backend_->server_error());
    } else {
      co_await SendFatal(sqlstate::kUnableToConnect,
                         "pgrelay could not connect to the primary: " + backend_->error_message());
    }
    co_return false;
  }
  std::tie(pid_, key_) = ctx_.cancels->Register();
  ctx_.cancels->Update(
      pid_, CancelTarget{backend_->host(), backend_->port(), backend_->pid(), backend_->key()});
  scratch_ = backend_->startup_messages();
  protocol::AppendBackendKeyData(&scratch_, pid_, key_);
  protocol::AppendReadyForQuery(&scratch_, 'I');
  client_stream_.ConsumeLast();
  PGRELAY_LOG(kDebug, "session",
              "client " << peer_ << " user=" << user_ << " database=" << database_
                        << " connected to " << primary->name);
  co_return !co_await client_stream_.Write(scratch_);
}

awaitable<void> ClientSession::HandleCancel(int32_t pid, int32_t key) {
  auto target = ctx_.cancels->Find(pid, key);
  if (!target) {
    PGRELAY_LOG(kDebug, "cancel", "client " << peer_ << ": cancel request for unknown session");
    co_return;
  }
  tcp::socket s(client_.get_executor());
  Watchdog watchdog(client_.get_executor());
  watchdog.Arm(config_.limits.connect_timeout, [&s] {
    error_code ignored;
    s.close(ignored);
  });
  tcp::resolver resolver(client_.get_executor());
  auto [rec, endpoints] =
      co_await resolver.async_resolve(target->host, std::to_string(target->port), kNoThrow);
  if (rec) co_return;
  auto [cec, ep] = co_await asio::async_connect(s, endpoints, kNoThrow);
  if (cec) co_return;
  std::string packet;
  protocol::MessageWriter(&packet)
      .Begin(0)
      .Int32(protocol::kCancelRequestCode)
      .Int32(target->backend_pid)
      .Int32(target->backend_key)
      .End();
  auto [wec, n] = co_await asio::async_write(s, asio::buffer(packet), kNoThrow);
  PGRELAY_LOG(kInfo, "cancel",
              "client " << peer_ << ": cancel request forwarded to " << target->host << ":"
                        << target->port << (wec ? " (failed)" : ""));
}

namespace {

// Relays one direction: reads from `from` into `in`, hands complete or streamed messages to
// `to` in batches (one gather write per read), calls `inspect` only for inspected types.
template <typename Inspect, typename IdleCheck>
awaitable<ClientSession::PumpEnd> Pump(tcp::socket& from, IoBuffer& in, tcp::socket& to,
                                       FrameScanner& scanner, std::vector<asio::const_buffer>& out,
                                       Inspect inspect, IdleCheck idle) {
  using End = ClientSession::PumpEnd;
  for (;;) {
    out.clear();
    size_t needed = 0;
    std::optional<End> end;
    while (!end) {
      FrameScanner::Frame f = scanner.Next(in.Unconsumed());
      switch (f.kind) {
        case FrameScanner::Kind::kWhole:
          if (scanner.inspected(f.type) && inspect(f.type, f.bytes) == Action::kStop) {
            end = End::kTerminate;
          } else {
            Gather(out, f.bytes);
          }
          in.Consume(f.bytes.size());
          continue;
        case FrameScanner::Kind::kPartial:
          Gather(out, f.bytes);
          in.Consume(f.bytes.size());
          continue;
        case FrameScanner::Kind::kNeedMore:
          needed = f.needed;
          break;
        case FrameScanner::Kind::kBadLength:
          end = End::kBadLength;
          break;
        case FrameScanner::Kind::kTooLarge:
          end = End::kTooLarge;
          break;
      }
      break;
    }
    if (!out.empty()) {
      auto [ec, n] = co_await asio::async_write(to, out, kNoThrow);
      if (ec) co_return End::kSinkClosed;
    }
    if (end) co_return *end;
    if (in.Unconsumed().empty()) in.ShrinkIfIdle();
    in.MakeRoom(needed);
    auto buffer = asio::buffer(in.WritePtr(), in.WritableSize());
    if (idle.enabled()) {
      using namespace asio::experimental::awaitable_operators;
      idle.timer().expires_after(idle.after());
      auto r =
          co_await (from.async_read_some(buffer, kNoThrow) || idle.timer().async_wait(kNoThrow));
      if (r.index() == 1) {
        if (idle.expired()) co_return End::kIdle;
        continue;  // inside a transaction: idle time there is not limited here
      }
      auto [ec, n] = std::get<0>(r);
      if (ec) co_return End::kSourceClosed;
      in.Commit(n);
    } else {
      auto [ec, n] = co_await from.async_read_some(buffer, kNoThrow);
      if (ec) co_return End::kSourceClosed;
      in.Commit(n);
    }
  }
}

struct NoIdle {
  bool enabled() const { return false; }
  asio::steady_timer& timer() { std::terminate(); }
  std::chrono::milliseconds after() const { return {}; }
  bool expired() const { return false; }
};

struct ClientIdle {
  asio::steady_timer* t;
  std::chrono::milliseconds limit;
  const char* tx_status;
  bool enabled() const { return limit.count() > 0; }
  asio::steady_timer& timer() { return *t; }
  std::chrono::milliseconds after() const { return limit; }
  bool expired() const { return *tx_status == 'I'; }
};

}  // namespace

awaitable<ClientSession::PumpEnd> ClientSession::ClientToBackend() {
  FrameScanner scanner(config_.limits.max_message_size);
  scanner.Inspect('X');
  asio::steady_timer idle_timer(client_.get_executor());
  ClientIdle idle{&idle_timer, config_.limits.client_idle_timeout, &tx_status_};
  co_return co_await Pump(
      client_, client_buf_, backend_->socket(), scanner, to_backend_,
      [](char, std::string_view) { return Action::kStop; }, idle);
}

awaitable<ClientSession::PumpEnd> ClientSession::BackendToClient() {
  FrameScanner scanner(kMaxBackendMessage);
  scanner.Inspect('Z');
  scanner.Inspect('E');
  co_return co_await Pump(
      backend_->socket(), backend_->buffer(), client_, scanner, to_client_,
      [this](char type, std::string_view msg) {
        if (type == 'Z') {
          tx_status_ = msg.size() > 5 ? msg[5] : 'I';
        } else {
          auto fields = protocol::ParseErrorFields(msg.substr(5));
          if (fields.severity == "FATAL" || fields.severity == "PANIC") backend_sent_fatal_ = true;
        }
        return Action::kForward;
      },
      NoIdle{});
}

awaitable<void> ClientSession::Relay() {
  using namespace asio::experimental::awaitable_operators;
  to_backend_.reserve(16);
  to_client_.reserve(16);
  auto result = co_await (ClientToBackend() || BackendToClient());
  if (result.index() == 0) {
    switch (std::get<0>(result)) {
      case PumpEnd::kTerminate:
      case PumpEnd::kSourceClosed: {
        // The client left: say goodbye to the server properly.
        std::string terminate;
        protocol::MessageWriter(&terminate).Begin('X').End();
        co_await asio::async_write(backend_->socket(), asio::buffer(terminate), kNoThrow);
        break;
      }
      case PumpEnd::kSinkClosed:
        PGRELAY_LOG(
            kWarning, "session",
            "client " << peer_ << ": lost the connection to node " << backend_->node_name());
        co_await SendFatal(sqlstate::kConnectionFailure,
                           "pgrelay lost the connection to node " + backend_->node_name(),
                           "Reconnect; the statement may not have run.");
        break;
      case PumpEnd::kBadLength:
        PGRELAY_LOG(kWarning, "session", "client " << peer_ << ": invalid message length");
        co_await SendFatal(sqlstate::kProtocolViolation, "invalid message length");
        break;
      case PumpEnd::kTooLarge:
        PGRELAY_LOG(kWarning, "session",
                    "client " << peer_ << ": message exceeds max_message_size");
        co_await SendFatal(sqlstate::kProgramLimitExceeded,
                           "message exceeds the maximum size of " +
                               std::to_string(config_.limits.max_message_size) + " bytes",
                           "Send a smaller message or raise limits.max_message_size.");
        break;
      case PumpEnd::kIdle:
        co_await SendFatal(sqlstate::kIdleSessionTimeout,
                           "terminating connection due to idle-session timeout");
        break;
    }
  } else {
    PumpEnd end = std::get<1>(result);
    if (end == PumpEnd::kSourceClosed && !backend_sent_fatal_) {
      PGRELAY_LOG(
          kWarning, "session",
          "client " << peer_ << ": node " << backend_->node_name() << " closed the connection");
      co_await SendFatal(
          sqlstate::kConnectionFailure,
          "server connection to node " + backend_->node_name() + " closed unexpectedly",
          "Reconnect; a transaction in progress was rolled back.");
    }
  }
}

}  // namespace pgrelay::proxy
