#include "proxy/client_session.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <exception>
#include <variant>

#include "config/log.h"
#include "proxy/pgrelay_settings.h"
#include "proxy/protocol/crypto_util.h"
#include "proxy/protocol/md5_auth.h"
#include "proxy/protocol/messages.h"
#include "proxy/protocol/scram.h"
#include "proxy/watchdog.h"

namespace pgrelay::proxy {

namespace {

namespace sqlstate = protocol::sqlstate;

constexpr uint32_t kMaxAuthMessage = 10000;
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

ClientSession::ClientSession(tcp::socket socket, ServerContext& context, WorkerContext& worker)
    : ctx_(context),
      config_(worker.config),
      worker_(worker),
      client_(std::move(socket)),
      client_buf_(&worker.pool),
      client_stream_(client_, client_buf_),
      switch_signal_(client_.get_executor()),
      readers_done_(client_.get_executor()),
      logins_done_(client_.get_executor()),
      client_write_free_(client_.get_executor()),
      self_(std::make_shared<ClientSession*>(this)),
      lsn_timer_(client_.get_executor()) {
  backends_.resize(config::kMaxNodes);  // one per node slot: never reallocated
  // Room for typical statements up front: a query a little longer than every one before it
  // would otherwise grow these (an allocation) in the middle of a busy session.
  outbox_.reserve(kMessageRoom);
  batch_.bytes.reserve(kMessageRoom);
  peer_ = PeerName(client_.socket());
  peer_address_ = peer_.substr(0, peer_.rfind(':'));
  error_code ignored;
  client_.socket().set_option(tcp::no_delay(true), ignored);
}

ClientSession::~ClientSession() {
  for (auto& b : backends_) {
    if (b) CountBackend(b.get(), false);
  }
  if (pid_ != 0) ctx_.cancels->Unregister(pid_);
  if (counted_) ctx_.client_connections.fetch_sub(1, std::memory_order_relaxed);
}

void ClientSession::CloseAll(bool keep_resetting) {
  error_code ignored;
  client_.Close();
  lsn_timer_.cancel();
  for (auto& b : backends_) {
    if (b && !(keep_resetting && b->resetting)) b->conn->socket().close(ignored);
  }
  for (const Login& login : logins_) login.conn->socket().close(ignored);
}

std::unique_ptr<BackendConnection> ClientSession::FromPool(const BackendLoginParams& params,
                                                           const health::NodeStatus& node,
                                                           Backend* b) {
  if (config_->pool.mode != config::PoolMode::kSession) return nullptr;
  // The node's role at login is in the key: the client sees the ParameterStatus values the
  // connection reported at its login (in_hot_standby among them), so a connection made while
  // the node was a replica never serves as a primary's after a promotion, nor the reverse.
  b->pool_key = BackendPool::KeyOf(params);
  b->pool_key.append(health::ToString(node.role));
  return worker_.backends.Take(b->node, b->pool_key);
}

awaitable<void> ClientSession::SendFatal(std::string_view code, std::string_view message,
                                         std::string_view hint) {
  // Another writer may be mid-message (a backend reader): wait for it, then write alone.
  while (client_writing_) co_await client_write_free_.Wait();
  client_writing_ = true;
  if (!started_) CountRejected(code);
  scratch_.clear();
  protocol::AppendError(&scratch_, "FATAL", code, message, hint);
  co_await client_stream_.Write(scratch_);
  client_writing_ = false;
  client_write_free_.Notify();
}

void ClientSession::CountRejected(std::string_view code) {
  if (rejected_counted_) return;
  rejected_counted_ = true;
  using admin::RejectReason;
  RejectReason reason = RejectReason::kProtocolError;
  if (code == sqlstate::kTooManyConnections) {
    reason = RejectReason::kMaxConnections;
  } else if (code.starts_with("28")) {
    reason = RejectReason::kAuthFailed;
  } else if (code.starts_with("3D")) {
    reason = RejectReason::kAuthFailed;  // no such database: refused like a bad login
  } else if (code == sqlstate::kCannotConnectNow || code.starts_with("08")) {
    reason = code == sqlstate::kProtocolViolation ? RejectReason::kProtocolError
                                                  : RejectReason::kBackendUnavailable;
  } else if (code == sqlstate::kAdminShutdown) {
    reason = RejectReason::kShuttingDown;
  }
  worker_.metrics->Inc(ctx_.metrics->client_connections_rejected.At(reason));
}

void ClientSession::CountBackend(Backend* b, bool open) {
  if (b->counted == open) return;
  b->counted = open;
  worker_.metrics->Add(ctx_.metrics->backend_connections.At(static_cast<size_t>(b->node)),
                       open ? 1 : -1);
}

awaitable<void> ClientSession::Run() {
  try {
    if (co_await Startup()) {
      started_ = true;
      co_await Relay();
    }
  } catch (const std::exception& e) {
    PGRELAY_LOG(kError, "session", "client " << peer_ << ": internal error: " << e.what());
  }
  CloseAll();
  PGRELAY_LOG(kDebug, "session", "client " << peer_ << " disconnected");
}

awaitable<bool> ClientSession::Startup() {
  Watchdog watchdog(client_.get_executor());
  watchdog.Arm(config_->limits.startup_timeout, [this] { CloseAll(); });
  bool ok = co_await StartupSteps();
  watchdog.Disarm();
  if (watchdog.fired()) {
    if (!rejected_counted_) {
      rejected_counted_ = true;
      worker_.metrics->Inc(
          ctx_.metrics->client_connections_rejected.At(admin::RejectReason::kStartupTimeout));
    }
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << ": start-up and authentication took"
                          << " longer than startup_timeout, closed");
    co_return false;
  }
  if (!ok) co_return false;
  co_return co_await ConnectFirstBackend();
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
      ssl_answered = true;
      std::shared_ptr<const ServerTls> tls = ctx_.tls.load(std::memory_order_acquire);
      if (tls == nullptr) {  // tls.mode disable: the client goes on in plain text (or gives up)
        if (co_await client_stream_.Write("N")) co_return false;
        continue;
      }
      // Bytes sent after the SSLRequest but before the handshake would count as if they had
      // come through TLS (CVE-2021-23214): refuse them, as PostgreSQL does.
      client_stream_.ConsumeLast();
      if (!client_buf_.Unconsumed().empty()) {
        co_await SendFatal(sqlstate::kProtocolViolation,
                           "received unencrypted data after SSL request");
        co_return false;
      }
      if (co_await client_stream_.Write("S")) co_return false;
      const error_code ec = co_await client_.Handshake(std::move(tls));
      if (ec) {
        CountRejected(sqlstate::kProtocolViolation);
        PGRELAY_LOG(kWarning, "session",
                    "client " << peer_ << ": TLS handshake failed: " << ec.message());
        co_return false;
      }
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
      const std::string message =
          packet.error.empty() ? std::string("unexpected start-up packet") : packet.error;
      co_await SendFatal(sqlstate::kProtocolViolation, message);
      co_return false;
    }
    break;
  }

  if (!client_.tls()) {
    std::shared_ptr<const ServerTls> tls = ctx_.tls.load(std::memory_order_acquire);
    if (tls != nullptr && tls->mode == config::TlsMode::kRequire) {
      PGRELAY_LOG(kWarning, "session", "client " << peer_ << " refused: not using TLS");
      co_await SendFatal(sqlstate::kInvalidAuthorization,
                         "pgrelay accepts only TLS connections (tls.mode: require)",
                         "Connect with sslmode=require, verify-ca or verify-full.");
      co_return false;
    }
  }
  const int major = packet.protocol >> 16;
  const int minor = packet.protocol & 0xffff;
  if (major != 3) {
    const std::string message = "unsupported frontend protocol " + std::to_string(major) + "." +
                                std::to_string(minor) + ": server supports 3.0 to 3.0";
    co_await SendFatal(sqlstate::kFeatureNotSupported, message);
    co_return false;
  }
  std::vector<std::string> unknown_options;
  std::vector<std::pair<std::string, std::string>> own_settings;  // pgrelay.*: never forwarded
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
    } else if (name.starts_with("pgrelay.")) {
      own_settings.emplace_back(name, value);
    } else if (name == "options") {
      for (auto& setting : ExtractPgrelayOptions(&value))
        own_settings.push_back(std::move(setting));
      if (!value.empty()) forwarded_params_.emplace_back(name, value);
    } else {
      forwarded_params_.emplace_back(name, value);
    }
  }
  for (const auto& [name, value] : own_settings) {
    const std::string error = SetPgrelaySetting(name, value);
    if (!error.empty()) {
      co_await SendFatal(
          name == kMinLsnSetting ? sqlstate::kInvalidParameterValue : sqlstate::kUndefinedObject,
          error);
      co_return false;
    }
  }
  if (user_.empty()) {
    co_await SendFatal(sqlstate::kInvalidAuthorization,
                       "no PostgreSQL user name specified in startup packet");
    co_return false;
  }
  if (database_.empty()) database_ = user_;
  for (const auto& [name, value] : forwarded_params_) {
    if (name == "application_name") application_name_ = value;
  }
  strategy_ = config_->StrategyFor(database_, user_, application_name_);
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
  if (now > config_->limits.max_client_connections) {
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << " refused: max_client_connections ("
                          << config_->limits.max_client_connections << ") reached");
    co_await SendFatal(sqlstate::kTooManyConnections, "sorry, too many clients already",
                       "Raise limits.max_client_connections or use fewer connections.");
    co_return false;
  }
  co_return co_await Authenticate();
}

awaitable<bool> ClientSession::Authenticate() {
  auth_ = ctx_.auth.load(std::memory_order_acquire);
  auth_user_ = auth_->Find(user_);
  bool ok = false;
  switch (config_->auth) {
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
  if (config_->auth != config::AuthMethod::kTrust) ctx_.auth_throttle->OnSuccess(peer_address_);
  scratch_.clear();
  protocol::AppendAuthRequest(&scratch_, protocol::kAuthOk);
  co_return !co_await client_stream_.Write(scratch_);
}

awaitable<bool> ClientSession::AuthenticateScram(const AuthDirectory::User* user) {
  scratch_.clear();
  using namespace std::string_view_literals;
  // Over TLS, SCRAM-SHA-256-PLUS (channel binding) first, as PostgreSQL lists them.
  const ServerTls* tls = client_.server_tls();
  protocol::AppendAuthRequest(
      &scratch_, protocol::kAuthSasl,
      tls ? "SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"sv : "SCRAM-SHA-256\0\0"sv);
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
  const bool plus = tls != nullptr && mechanism == protocol::kScramPlusMechanism;
  if (mechanism != protocol::kScramMechanism && !plus) {
    co_await SendFatal(sqlstate::kProtocolViolation,
                       "client selected an invalid SASL authentication mechanism");
    co_return false;
  }
  protocol::ScramServer server(user ? &user->scram : nullptr);
  if (tls != nullptr) server.SetChannelBinding(plus, tls->end_point_hash);
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
    co_await FailPassword(user != nullptr);
    co_return false;
  }
  scratch_.clear();
  protocol::AppendAuthRequest(&scratch_, protocol::kAuthSaslFinal, reply);
  co_return !co_await client_stream_.Write(scratch_);
}

awaitable<void> ClientSession::FailPassword(bool known_user) {
  const AuthThrottle::Failure f =
      ctx_.auth_throttle->OnFailure(peer_address_, AuthThrottle::Clock::now());
  // Stay well inside limits.startup_timeout, which would close the connection silently.
  const auto delay =
      std::min<std::chrono::milliseconds>(f.delay, config_->limits.startup_timeout / 2);
  PGRELAY_LOG(kWarning, "auth",
              "client " << peer_ << ": password authentication failed for user \"" << user_ << "\""
                        << (known_user ? "" : " (unknown user)") << "; failure " << f.in_a_row
                        << " in a row from " << peer_address_ << ", answered after "
                        << delay.count() << " ms");
  asio::steady_timer wait(client_.get_executor(), delay);
  co_await wait.async_wait(kNoThrow);
  const std::string message = "password authentication failed for user \"" + user_ + "\"";
  co_await SendFatal(sqlstate::kInvalidPassword, message);
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
    co_await FailPassword(user != nullptr);
    co_return false;
  }
  co_return true;
}

std::string ClientSession::NoPrimaryMessage(const health::Topology& topology) {
  std::string message = topology.primary_conflict
                            ? "pgrelay: more than one node reports itself primary; refusing writes"
                            : "pgrelay: no primary node is available";
  std::string details;
  for (const auto& node : topology.nodes) {
    if (node.last_error.empty()) continue;
    details += details.empty() ? " (" : "; ";
    details += node.name + ": " + node.last_error;
  }
  if (!details.empty()) message += details + ")";
  return message;
}

BackendLoginParams ClientSession::LoginParamsFor(const health::NodeStatus& node) const {
  BackendLoginParams params;
  params.node_name = node.name;
  params.host = node.host;
  params.port = node.port;
  if (config_->backend) {
    params.user = config_->backend->user;
    params.password = config_->backend->password;
  } else {
    params.user = user_;
    params.password = auth_user_ ? auth_user_->password : std::string();
  }
  params.database = database_;
  params.options = forwarded_params_;
  params.timeout = config_->limits.connect_timeout;
  params.tls = ctx_.backend_tls.load(std::memory_order_acquire);
  return params;
}

awaitable<bool> ClientSession::ConnectFirstBackend() {
  // The first connection is to the primary: it checks the database and credentials the way
  // PostgreSQL would, and its ParameterStatus values are the ones the client sees. With no
  // primary reachable, a session that may read from replicas starts on one instead (writes fail
  // clearly until a primary is back, like MaxScale's read-only mode).
  auto topology = ctx_.monitor->Snapshot();
  std::vector<int> candidates;
  if (topology->primary >= 0) candidates.push_back(topology->primary);
  if (strategy_ != config::Strategy::kLeader && !topology->replicas.empty()) {
    const size_t n = topology->replicas.size();
    const size_t first = worker_.first_replica_rr++ % n;
    for (size_t i = 0; i < n; ++i) candidates.push_back(topology->replicas[(first + i) % n]);
  }
  if (candidates.empty()) {
    const std::string message = NoPrimaryMessage(*topology);
    const std::string hint =
        "Check that the PostgreSQL nodes are running and accept pgrelay's credentials; pgrelay "
        "probes them every " +
        std::to_string(config_->health.interval.count()) + " ms.";
    co_await SendFatal(sqlstate::kCannotConnectNow, message, hint);
    co_return false;
  }
  std::unique_ptr<Backend> b;
  const health::NodeStatus* node = nullptr;
  for (int candidate : candidates) {
    node = &topology->nodes[candidate];
    b = std::make_unique<Backend>();
    b->node = candidate;
    const BackendLoginParams params = LoginParamsFor(*node);
    b->conn = FromPool(params, *node, b.get());
    if (b->conn != nullptr) {
      CountBackend(b.get(), true);
      break;
    }
    b->conn = std::make_unique<BackendConnection>(client_.get_executor(), &worker_.pool);
    if (co_await b->conn->Login(params)) {
      CountBackend(b.get(), true);
      break;
    }
    worker_.metrics->Inc(ctx_.metrics->backend_connect_failures.At(static_cast<size_t>(candidate)));
    PGRELAY_LOG(kWarning, "session",
                "client " << peer_ << ": backend login to " << node->name
                          << " failed: " << b->conn->error_message());
    const bool last = candidate == candidates.back();
    if (!b->conn->server_error().empty()) {
      // The server refused the client (credentials, database): that is the client's answer.
      const protocol::ErrorFields fields =
          protocol::ParseErrorFields(std::string_view(b->conn->server_error()).substr(5));
      CountRejected(fields.code);
      co_await client_stream_.Write(b->conn->server_error());
      co_return false;
    }
    if (last) {
      const std::string message =
          (candidates.size() == 1 ? "pgrelay could not connect to the primary: "
                                  : "pgrelay could not connect to the primary or a replica: ") +
          b->conn->error_message();
      co_await SendFatal(sqlstate::kUnableToConnect, message);
      co_return false;
    }
  }
  if (b->node != topology->primary) {
    PGRELAY_LOG(kInfo, "session",
                "client " << peer_ << ": no primary reachable; the session "
                          << "starts on " << node->name << " (reads only until one is back)");
  }
  ctx_.catalog->NoteDatabase(database_);  // only databases the primary let us into
  CancelRegistry::Registration registration = ctx_.cancels->Register();
  pid_ = registration.pid;
  key_ = registration.key;
  cancel_slot_ = std::move(registration.slot);
  cancel_slot_->SetTarget(b->node, CancelTargetOf(*b->conn));
  cancel_slot_->SetCurrent(b->node);
  scratch_ = b->conn->startup_messages();
  protocol::AppendBackendKeyData(&scratch_, pid_, key_);
  protocol::AppendReadyForQuery(&scratch_, 'I');
  client_stream_.ConsumeLast();
  PGRELAY_LOG(kDebug, "session",
              "client " << peer_ << " user=" << user_ << " database=" << database_
                        << " connected to " << node->name);
  current_ = b.get();
  backends_[b->node] = std::move(b);
  if (co_await client_stream_.Write(scratch_)) co_return false;
  StartReader(current_);
  co_return true;
}

awaitable<void> ClientSession::HandleCancel(int32_t pid, int32_t key) {
  auto target = ctx_.cancels->Find(pid, key);
  if (!target) {
    PGRELAY_LOG(kDebug, "cancel", "client " << peer_ << ": cancel request for unknown session");
    co_return;
  }
  tcp::socket s(client_.get_executor());
  Watchdog watchdog(client_.get_executor());
  watchdog.Arm(config_->limits.connect_timeout, [&s] {
    error_code ignored;
    s.close(ignored);
  });
  tcp::resolver resolver(client_.get_executor());
  const std::string port = std::to_string(target->port);
  auto [rec, endpoints] = co_await resolver.async_resolve(target->host, port, kNoThrow);
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

}  // namespace pgrelay::proxy
