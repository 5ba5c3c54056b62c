#include "proxy/admin/admin_server.h"

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cctype>
#include <cstdio>
#include <exception>
#include <future>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "config/log.h"
#include "proxy/admin/metrics.h"
#include "proxy/protocol/crypto_util.h"

namespace pgrelay::admin {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using boost::system::error_code;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

constexpr auto kLingerTime = std::chrono::seconds(1);
constexpr size_t kMaxLingerBytes = 256 << 10;
constexpr std::string_view kTextType = "text/plain; charset=utf-8";
constexpr std::string_view kJsonType = "application/json";
constexpr std::string_view kReadEndpoints[] = {"/metrics", "/healthz", "/readyz", "/cluster"};
constexpr std::string_view kActionEndpoints[] = {"/pause", "/resume", "/reload", "/switchover"};
constexpr std::string_view kEndpointList =
    "GET /metrics, /healthz, /readyz, /cluster; POST /pause, /resume, /reload, /switchover";

bool Contains(std::span<const std::string_view> list, std::string_view item) {
  for (std::string_view s : list) {
    if (s == item) return true;
  }
  return false;
}

std::string FormatLsn(uint64_t lsn) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(lsn >> 32),
                static_cast<unsigned>(lsn & 0xffffffffu));
  return buf;
}

json::value LsnOrNull(uint64_t lsn) {
  if (lsn == 0) return nullptr;
  return json::value(FormatLsn(lsn));
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

class AdminServer::Impl {
 public:
  Impl(AdminOptions options, AdminSources sources)
      : options_(std::move(options)), sources_(std::move(sources)) {
    SetToken(options_.token);
  }

  void SetToken(const std::string& token) {
    std::lock_guard lock(token_mu_);
    has_token_ = !token.empty();
    token_digest_ = has_token_ ? protocol::Sha256(token) : protocol::Sha256Digest{};
  }

  void Start();
  void Stop();
  uint16_t port() const { return port_; }

 private:
  asio::awaitable<void> Accept();
  asio::awaitable<void> Serve(tcp::socket socket);
  // The response, or nullopt for an admin action (token checked) that RunAction runs.
  std::optional<Response> Handle(const Request& request);
  Response Text(const Request& request, http::status status, std::string body) const;
  Response Metrics(const Request& request) const;
  Response Ready(const Request& request) const;
  Response Cluster(const Request& request) const;
  // Runs the action on a thread of its own (a switchover takes seconds) while this thread goes
  // on serving scrapes; the response once it is done.
  asio::awaitable<Response> RunAction(const Request& request);
  // The 401 response if the request lacks the token, else nullopt.
  std::optional<Response> CheckToken(const Request& request) const;

  const AdminOptions options_;  // options_.token: the token at start (SetToken replaces it)
  const AdminSources sources_;
  mutable std::mutex token_mu_;  // guards has_token_, token_digest_ (a reload may set them)
  bool has_token_ = false;
  protocol::Sha256Digest token_digest_{};
  asio::io_context io_{1};
  tcp::acceptor acceptor_{io_};
  std::thread thread_;
  uint16_t port_ = 0;
  bool stopping_ = false;  // admin thread only
  struct ActionThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::vector<ActionThread> action_threads_;     // admin thread only until Stop joins them
  std::unordered_set<beast::tcp_stream*> open_;  // admin thread only
};

void AdminServer::Impl::Start() {
  const std::string where = options_.listen.ToString();
  if (options_.token.empty() && !config::IsLoopbackHost(options_.listen.host)) {
    throw std::runtime_error(
        "admin.listen " + where +
        " is not a loopback address and no admin token is set: anyone who reaches it could "
        "use the admin endpoints. Set admin.token or admin.token_env, or listen on "
        "127.0.0.1 / [::1]");
  }
  error_code ec;
  asio::ip::address address = EqualsIgnoreCase(options_.listen.host, "localhost")
                                  ? asio::ip::address(asio::ip::address_v4::loopback())
                                  : asio::ip::make_address(options_.listen.host, ec);
  if (ec) {
    throw std::runtime_error("admin.listen " + where + ": '" + options_.listen.host +
                             "' is not an IP address");
  }
  const tcp::endpoint endpoint(address, options_.listen.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    error_code ignored;
    acceptor_.close(ignored);
    throw std::runtime_error("cannot listen on admin.listen " + where + ": " + ec.message());
  }
  port_ = acceptor_.local_endpoint(ec).port();
  asio::co_spawn(io_, Accept(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& error) {
      PGRELAY_LOG(kError, "admin", "listener stopped: " << error.what());
    }
  });
  thread_ = std::thread([this] {
    NameThisThread("pgrelay-admin");
    io_.run();
  });
  const std::string bound = config::Endpoint{options_.listen.host, port_}.ToString();
  PGRELAY_LOG(
      kInfo, "admin",
      "admin endpoint on http://" << bound << (options_.token.empty() ? "" : " (token required)"));
}

void AdminServer::Impl::Stop() {
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    stopping_ = true;
    error_code ignored;
    acceptor_.close(ignored);
    for (beast::tcp_stream* stream : open_) stream->socket().close(ignored);
  });
  thread_.join();  // run() returns once every coroutine has ended
  for (ActionThread& a : action_threads_) a.thread.join();  // an action ends within its bound
  action_threads_.clear();
}

asio::awaitable<void> AdminServer::Impl::Accept() {
  while (!stopping_) {
    auto [ec, socket] = co_await acceptor_.async_accept(kNoThrow);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      PGRELAY_LOG(kWarning, "admin", "accept failed: " << ec.message());
      if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
        asio::steady_timer pause(io_, std::chrono::milliseconds(50));
        co_await pause.async_wait(kNoThrow);
      }
      continue;
    }
    if (open_.size() >= options_.max_connections) {
      error_code ignored;
      socket.close(ignored);  // over the limit: the client sees the connection close
      continue;
    }
    asio::co_spawn(io_, Serve(std::move(socket)), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& error) {
        PGRELAY_LOG(kError, "admin", "connection ended by an internal error: " << error.what());
      }
    });
  }
}

asio::awaitable<void> AdminServer::Impl::Serve(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  open_.insert(&stream);
  struct Unregister {
    std::unordered_set<beast::tcp_stream*>& open;
    beast::tcp_stream* stream;
    ~Unregister() { open.erase(stream); }
  } unregister{open_, &stream};

  beast::flat_buffer buffer(options_.max_header_bytes + options_.max_body_bytes);
  while (!stopping_) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(options_.max_header_bytes));
    parser.body_limit(options_.max_body_bytes);
    stream.expires_after(options_.request_timeout);
    auto [read_error, read_bytes] = co_await http::async_read(stream, buffer, parser, kNoThrow);
    Response response;
    bool keep_alive = false;
    if (read_error) {
      // A client that went away or timed out gets nothing; a malformed request gets a status.
      if (read_error == http::error::end_of_stream || read_error == beast::error::timeout ||
          read_error == asio::error::operation_aborted || read_error == asio::error::eof ||
          read_error == asio::error::connection_reset ||
          read_error == http::error::partial_message) {
        break;
      }
      Request dummy;
      http::status status = http::status::bad_request;
      std::string body = "bad request: " + read_error.message() + "\n";
      if (read_error == http::error::header_limit || read_error == http::error::buffer_overflow) {
        status = http::status::request_header_fields_too_large;
        body =
            "request header larger than " + std::to_string(options_.max_header_bytes) + " bytes\n";
      } else if (read_error == http::error::body_limit) {
        status = http::status::payload_too_large;
        body = "request body larger than " + std::to_string(options_.max_body_bytes) + " bytes\n";
      }
      response = Text(dummy, status, std::move(body));
    } else {
      const Request& request = parser.get();
      try {
        std::optional<Response> handled = Handle(request);
        if (handled) {
          response = std::move(*handled);
        } else {
          response = co_await RunAction(request);
        }
      } catch (const std::exception& e) {
        PGRELAY_LOG(kError, "admin", "internal error on " << request.target() << ": " << e.what());
        response = Text(request, http::status::internal_server_error, "internal error\n");
      }
      keep_alive = request.keep_alive() && !stopping_;
    }
    response.keep_alive(keep_alive);
    stream.expires_after(options_.request_timeout);
    auto [write_error, written] = co_await http::async_write(stream, response, kNoThrow);
    if (write_error || !keep_alive) break;
  }
  // Lingering close: send FIN, then drain what the client still sends (bounded), so closing
  // with unread input does not reset the connection before the client reads our answer.
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream.expires_after(kLingerTime);
  char scratch[4096];
  for (size_t drained = 0; drained < kMaxLingerBytes && !stopping_;) {
    auto [ec, n] = co_await stream.async_read_some(asio::buffer(scratch), kNoThrow);
    if (ec) break;
    drained += n;
  }
}

Response AdminServer::Impl::Text(const Request& request, http::status status,
                                 std::string body) const {
  Response response(status, request.version() == 10 ? 10 : 11);
  response.set(http::field::server, "pgrelay");
  response.set(http::field::content_type, kTextType);
  response.set(http::field::cache_control, "no-store");
  response.body() = std::move(body);
  response.prepare_payload();
  return response;
}

std::optional<Response> AdminServer::Impl::Handle(const Request& request) {
  const std::string_view target = request.target();
  if (target.empty() || target.front() != '/') {
    return Text(request, http::status::bad_request, "bad request target: must start with /\n");
  }
  const std::string_view path = target.substr(0, target.find('?'));

  if (Contains(kActionEndpoints, path)) {
    if (request.method() != http::verb::post) {
      Response r = Text(request, http::status::method_not_allowed, "use POST\n");
      r.set(http::field::allow, "POST");
      return r;
    }
    if (std::optional<Response> refused = CheckToken(request)) return refused;
    if (!sources_.on_action) {
      return Text(request, http::status::not_implemented,
                  "POST " + std::string(path) + " is not implemented yet\n");
    }
    return std::nullopt;
  }
  if (!Contains(kReadEndpoints, path)) {
    return Text(request, http::status::not_found,
                "not found; endpoints: " + std::string(kEndpointList) + "\n");
  }
  const bool head = request.method() == http::verb::head;
  if (request.method() != http::verb::get && !head) {
    Response r = Text(request, http::status::method_not_allowed, "use GET\n");
    r.set(http::field::allow, "GET, HEAD");
    return r;
  }
  Response response;
  if (path == "/metrics") {
    response = Metrics(request);
  } else if (path == "/healthz") {
    response = Text(request, http::status::ok, "ok\n");
  } else if (path == "/readyz") {
    response = Ready(request);
  } else {
    response = Cluster(request);
  }
  if (head) {  // the same header (Content-Length included), no body
    const size_t length = response.body().size();
    response.body().clear();
    response.content_length(length);
  }
  return response;
}

Response AdminServer::Impl::Metrics(const Request& request) const {
  if (sources_.metrics == nullptr) {
    return Text(request, http::status::service_unavailable, "no metrics registry\n");
  }
  Response response = Text(request, http::status::ok, sources_.metrics->Render());
  response.set(http::field::content_type, Registry::kContentType);
  return response;
}

Response AdminServer::Impl::Ready(const Request& request) const {
  auto not_ready = [&](std::string why) {
    return Text(request, http::status::service_unavailable, "not ready: " + why + "\n");
  };
  if (!sources_.topology) return not_ready("no topology source");
  const std::shared_ptr<const health::Topology> topology = sources_.topology();
  if (topology == nullptr) return not_ready("no health check has completed yet");
  const health::NodeStatus* primary = topology->Primary();
  if (primary == nullptr || primary->state == health::NodeHealth::kDown ||
      primary->state == health::NodeHealth::kFenced) {
    std::string why = topology->primary_conflict ? "more than one node claims to be primary ("
                                                 : "no primary is known (";
    bool first = true;
    for (const health::NodeStatus& n : topology->nodes) {
      if (n.removed) continue;
      why += (first ? "" : ", ") + n.name + ": " + std::string(health::ToString(n.state)) + " " +
             std::string(health::ToString(n.role));
      if (!n.last_error.empty()) why += " - " + n.last_error;
      first = false;
    }
    return not_ready(why + ")");
  }
  std::string degraded;
  if (sources_.coordination) {
    // Still ready (the primary cannot change without etcd, so the last record holds), but no
    // failover can happen until etcd answers.
    const std::optional<health::Coordinator::Status> c = sources_.coordination();
    if (c && !c->etcd_reachable) {
      degraded = "; degraded: etcd unreachable (" + c->last_error +
                 "), serving with the last failover record, no failover possible";
    }
  }
  return Text(request, http::status::ok,
              "ready: primary " + primary->name + " (" +
                  std::string(health::ToString(primary->state)) + "), epoch " +
                  std::to_string(topology->epoch) + degraded + "\n");
}

Response AdminServer::Impl::Cluster(const Request& request) const {
  if (!sources_.topology) {
    return Text(request, http::status::service_unavailable, "no topology source\n");
  }
  const std::shared_ptr<const health::Topology> topology = sources_.topology();
  if (topology == nullptr) {
    return Text(request, http::status::service_unavailable, "no health check has completed yet\n");
  }
  std::vector<int64_t> backend;
  if (sources_.backend_connections) backend = sources_.backend_connections();
  std::vector<int64_t> parked;
  if (sources_.pool_idle_connections) parked = sources_.pool_idle_connections();
  const auto now = std::chrono::steady_clock::now();

  json::array nodes;
  for (size_t i = 0; i < topology->nodes.size(); ++i) {
    const health::NodeStatus& n = topology->nodes[i];
    if (n.removed) continue;
    json::object node;
    node["name"] = n.name;
    node["host"] = n.host;
    node["port"] = n.port;
    node["weight"] = n.weight;
    node["state"] = health::ToString(n.state);
    node["role"] = health::ToString(n.role);
    node["up"] = n.up;
    node["last_error"] = n.last_error.empty() ? json::value(nullptr) : json::value(n.last_error);
    node["current_lsn"] = LsnOrNull(n.current_lsn);
    node["receive_lsn"] = LsnOrNull(n.receive_lsn);
    node["replay_lsn"] = LsnOrNull(n.replay_lsn);
    node["timeline"] = n.timeline > 0 ? json::value(n.timeline) : json::value(nullptr);
    node["replay_paused"] = n.replay_paused;
    node["wal_receiver_streaming"] =
        n.wal_receiver_streaming ? json::value(*n.wal_receiver_streaming) : json::value(nullptr);
    node["replay_lag_bytes"] =
        n.replay_lag_bytes ? json::value(*n.replay_lag_bytes) : json::value(nullptr);
    node["replay_lag_seconds"] =
        n.replay_lag_seconds ? json::value(*n.replay_lag_seconds) : json::value(nullptr);
    node["consecutive_failures"] = n.consecutive_failures;
    node["consecutive_successes"] = n.consecutive_successes;
    node["last_probe_age_seconds"] =
        n.last_probe == std::chrono::steady_clock::time_point{}
            ? json::value(nullptr)
            : json::value(std::chrono::duration<double>(now - n.last_probe).count());
    if (i < backend.size()) node["backend_connections"] = backend[i];
    if (i < parked.size()) node["pool_idle_connections"] = parked[i];
    nodes.push_back(std::move(node));
  }
  json::object root;
  root["version"] = topology->version;
  root["epoch"] = topology->epoch;
  const health::NodeStatus* primary = topology->Primary();
  root["primary"] = primary ? json::value(primary->name) : json::value(nullptr);
  root["primary_conflict"] = topology->primary_conflict;
  if (sources_.client_connections) root["client_connections"] = sources_.client_connections();
  root["nodes"] = std::move(nodes);
  if (sources_.coordination) {
    if (const std::optional<health::Coordinator::Status> c = sources_.coordination()) {
      json::object coordination;
      coordination["member"] = c->member;
      coordination["coordinator"] =
          c->holder.empty() ? json::value(nullptr) : json::value(c->holder);
      coordination["is_coordinator"] = c->coordinator;
      coordination["etcd_reachable"] = c->etcd_reachable;
      if (!c->etcd_reachable) coordination["etcd_error"] = c->last_error;
      json::object members;
      for (const auto& [name, view] : c->members) {
        error_code ec;
        json::value parsed = json::parse(view, ec);
        members[name] = ec ? json::value(view) : std::move(parsed);
      }
      coordination["members"] = std::move(members);
      root["coordination"] = std::move(coordination);
    }
  }

  Response response = Text(request, http::status::ok, json::serialize(root) + "\n");
  response.set(http::field::content_type, kJsonType);
  return response;
}

std::optional<Response> AdminServer::Impl::CheckToken(const Request& request) const {
  protocol::Sha256Digest expected;
  {
    std::lock_guard lock(token_mu_);
    if (!has_token_) return std::nullopt;
    expected = token_digest_;
  }
  const auto header = request.find(http::field::authorization);
  std::string_view value;
  if (header != request.end()) value = header->value();
  constexpr std::string_view kScheme = "Bearer ";
  if (value.size() < kScheme.size() ||
      !EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    Response r =
        Text(request, http::status::unauthorized,
             "missing bearer token: send the header Authorization: Bearer <admin token>\n");
    r.set(http::field::www_authenticate, "Bearer realm=\"pgrelay\"");
    return r;
  }
  value.remove_prefix(kScheme.size());
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  // Digests of equal size: the comparison takes the same time whatever the token's length.
  const protocol::Sha256Digest given = protocol::Sha256(value);
  if (!protocol::ConstantTimeEquals(protocol::AsView(given), protocol::AsView(expected))) {
    Response r = Text(request, http::status::unauthorized, "invalid token\n");
    r.set(http::field::www_authenticate, "Bearer realm=\"pgrelay\", error=\"invalid_token\"");
    return r;
  }
  return std::nullopt;
}

asio::awaitable<Response> AdminServer::Impl::RunAction(const Request& request) {
  const std::string target(request.target());
  const size_t question = target.find('?');
  const std::string path = target.substr(0, question);
  const std::string query =
      question == std::string::npos ? std::string() : target.substr(question + 1);
  auto task = std::make_shared<std::packaged_task<ActionResult()>>(
      [this, action = path.substr(1), query] { return sources_.on_action(action, query); });
  std::future<ActionResult> done = task->get_future();
  // Threads of finished actions are joined here; Stop joins the rest.
  std::erase_if(action_threads_, [](ActionThread& a) {
    if (!a.finished->load(std::memory_order_acquire)) return false;
    a.thread.join();
    return true;
  });
  auto finished = std::make_shared<std::atomic<bool>>(false);
  action_threads_.push_back(ActionThread{std::thread([task, finished] {
                                           NameThisThread("pgrelay-action");
                                           (*task)();
                                           finished->store(true, std::memory_order_release);
                                         }),
                                         finished});
  asio::steady_timer poll(io_);
  while (done.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    if (stopping_) co_return Text(request, http::status::service_unavailable, "shutting down\n");
    poll.expires_after(std::chrono::milliseconds(10));
    co_await poll.async_wait(kNoThrow);
  }
  ActionResult result = done.get();
  const auto status = http::int_to_status(static_cast<unsigned>(result.status));
  if (status == http::status::unknown) {
    co_return Text(request, http::status::internal_server_error, "invalid status from handler\n");
  }
  PGRELAY_LOG(kInfo, "admin", "POST " << target << ": " << result.status);
  co_return Text(request, status, std::move(result.body));
}

AdminServer::AdminServer(AdminOptions options, AdminSources sources)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(sources))) {}

AdminServer::~AdminServer() { Stop(); }

void AdminServer::Start() { impl_->Start(); }
void AdminServer::Stop() { impl_->Stop(); }
void AdminServer::SetToken(const std::string& token) { impl_->SetToken(token); }

uint16_t AdminServer::port() const { return impl_->port(); }

}  // namespace pgrelay::admin
