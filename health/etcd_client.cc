#include "health/etcd_client.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <exception>
#include <utility>

#include "proxy/protocol/crypto_util.h"

namespace pgrelay::health {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr uint64_t kMaxResponseBody = 64 * 1024 * 1024;
constexpr auto kWatchPoll = std::chrono::milliseconds(200);
// TCP keepalive on a watch connection: a peer that vanished is noticed after ~25 s of silence.
constexpr int kKeepaliveIdleSeconds = 10;
constexpr int kKeepaliveIntervalSeconds = 5;
constexpr int kKeepaliveProbes = 3;

using Parser = http::response_parser<http::string_body>;
using Request = http::request<http::string_body>;

struct Endpoint {
  std::string text;       // as configured (for errors)
  std::string authority;  // host:port (the Host header)
  std::string host;
  std::string port;
  std::string bad;  // why it cannot be used; empty if it can
};

// One HTTP/1.1 connection, kept alive between requests.
struct Connection {
  explicit Connection(asio::io_context& context) : io(context) {}

  void Close() {
    if (stream) {
      error_code ignored;
      stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream->close();
      stream.reset();
    }
    buffer.clear();
  }

  asio::io_context& io;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;
  size_t endpoint = 0;  // the endpoint `stream` is connected to
};

struct HttpReply {
  unsigned status = 0;
  std::string body;
};

std::string Describe(const error_code& ec) {
  if (ec == beast::error::timeout) return "timed out";
  return ec.message();
}

std::string Millis(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

std::string B64(std::string_view bytes) { return protocol::Base64Encode(bytes); }

// Runs `task` on `io` until it and everything it started are done.
template <typename T>
T RunBlocking(asio::io_context& io, asio::awaitable<T> task) {
  std::optional<T> result;
  std::exception_ptr failure;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr e, T value) {
    failure = e;
    result = std::move(value);
  });
  io.restart();
  io.run();
  if (failure) std::rethrow_exception(failure);
  return std::move(*result);
}

// Connects c to `ep` by `deadline`; "" or why not.
asio::awaitable<std::string> ConnectCo(Connection& c, const Endpoint& ep,
                                       Clock::time_point deadline) {
  c.Close();
  c.stream.emplace(c.io);
  c.stream->expires_at(deadline);
  error_code ec;
  const asio::ip::address address = asio::ip::make_address(ep.host, ec);
  if (!ec) {
    const auto port = static_cast<uint16_t>(std::stoi(ep.port));
    auto [connect_error] = co_await c.stream->async_connect(tcp::endpoint(address, port), kNoThrow);
    ec = connect_error;
  } else {
    // getaddrinfo runs on Asio's resolver thread; cancel() stops it only if it has not begun.
    auto resolver = std::make_shared<tcp::resolver>(c.io);
    asio::steady_timer timer(c.io, deadline);
    timer.async_wait([resolver](const error_code& e) {
      if (!e) resolver->cancel();
    });
    auto [resolve_error, results] = co_await resolver->async_resolve(ep.host, ep.port, kNoThrow);
    timer.cancel();
    if (resolve_error) {
      c.Close();
      co_return "resolve " + ep.host + ": " +
          (resolve_error == asio::error::operation_aborted ? std::string("timed out")
                                                           : resolve_error.message());
    }
    auto [connect_error, connected] = co_await c.stream->async_connect(results, kNoThrow);
    ec = connect_error;
  }
  if (ec) {
    c.Close();
    co_return "connect: " + Describe(ec);
  }
  c.stream->socket().set_option(tcp::no_delay(true), ec);
  co_return std::string();
}

bool IsStaleConnectionError(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
}

// Sends `req` over c (connecting to endpoint `index` first if needed) and reads the response
// into `parser`: all of it, or only the head if `streaming`. "" or why not. A kept-alive
// connection that the server closed meanwhile is replaced once.
asio::awaitable<std::string> ExchangeCo(Connection& c, const Endpoint& ep, size_t index,
                                        const Request& req, std::optional<Parser>& parser,
                                        Clock::time_point deadline, bool streaming) {
  for (int round = 0;; ++round) {
    const bool reused = c.stream.has_value();
    if (!reused) {
      std::string why = co_await ConnectCo(c, ep, deadline);
      if (!why.empty()) co_return why;
      c.endpoint = index;
    }
    parser.emplace();
    if (streaming) {
      parser->body_limit(boost::none);
    } else {
      parser->body_limit(kMaxResponseBody);
    }
    c.stream->expires_at(deadline);
    auto [write_error, written] = co_await http::async_write(*c.stream, req, kNoThrow);
    error_code ec = write_error;
    if (!ec) {
      if (streaming) {
        auto [read_error, read] =
            co_await http::async_read_header(*c.stream, c.buffer, *parser, kNoThrow);
        ec = read_error;
      } else {
        auto [read_error, read] = co_await http::async_read(*c.stream, c.buffer, *parser, kNoThrow);
        ec = read_error;
      }
    }
    if (!ec) co_return std::string();
    c.Close();
    if (reused && round == 0 && !parser->got_some() && IsStaleConnectionError(ec)) continue;
    co_return (write_error ? "write: " : "read: ") + Describe(ec);
  }
}

Request MakeRequest(const Endpoint& ep, const std::string& target, const std::string& body,
                    const std::string& token) {
  Request req(http::verb::post, target, 11);
  req.set(http::field::host, ep.authority);
  req.set(http::field::user_agent, "pgrelay");
  req.set(http::field::content_type, "application/json");
  if (!token.empty()) req.set(http::field::authorization, token);
  req.keep_alive(true);
  req.body() = body;
  req.prepare_payload();
  return req;
}

// The message of a gateway error: {"error": "...", "message": "...", "code": N} as a reply, or
// {"error": {"message": "...", ...}} inside a stream.
std::string ErrorMessage(const json::value& v) {
  if (const json::string* s = v.if_string()) return std::string(*s);
  if (const json::object* o = v.if_object()) {
    for (const char* name : {"message", "error"}) {
      if (const json::value* m = o->if_contains(name)) {
        if (m->is_string() && !m->get_string().empty()) return std::string(m->get_string());
      }
    }
  }
  return json::serialize(v);
}

std::string BodyErrorMessage(const std::string& body) {
  error_code ec;
  const json::value v = json::parse(body, ec);
  if (!ec) return ErrorMessage(v);
  std::string text = body.substr(0, 200);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text.empty() ? "(empty body)" : text;
}

bool IsInvalidToken(std::string_view message) {
  return message.find("invalid auth token") != std::string_view::npos ||
         message.find("revision of auth store is old") != std::string_view::npos;
}

// Reads gateway JSON: int64 as strings, bytes as base64, absent fields as zero. Keeps the first
// problem.
class Decoder {
 public:
  int64_t Int(const json::object& o, std::string_view name) {
    const json::value* v = o.if_contains(name);
    if (v == nullptr) return 0;
    if (const json::string* s = v->if_string()) {
      int64_t n = 0;
      auto [ptr, ec] = std::from_chars(s->data(), s->data() + s->size(), n);
      if (ec == std::errc() && ptr == s->data() + s->size()) return n;
    } else if (const int64_t* n = v->if_int64()) {
      return *n;
    } else if (const uint64_t* u = v->if_uint64()) {
      if (*u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(*u);
    }
    Fail("field " + std::string(name) + " is not an integer: " + json::serialize(*v));
    return 0;
  }

  std::string Bytes(const json::object& o, std::string_view name) {
    const std::string text = Str(o, name);
    std::optional<std::string> bytes = protocol::Base64Decode(text);
    if (!bytes) {
      Fail("field " + std::string(name) + " is not base64");
      return {};
    }
    return std::move(*bytes);
  }

  std::string Str(const json::object& o, std::string_view name) {
    const json::value* v = o.if_contains(name);
    if (v == nullptr) return {};
    if (const json::string* s = v->if_string()) return std::string(*s);
    Fail("field " + std::string(name) + " is not a string");
    return {};
  }

  bool Bool(const json::object& o, std::string_view name) {
    const json::value* v = o.if_contains(name);
    if (v == nullptr) return false;
    if (const bool* b = v->if_bool()) return *b;
    Fail("field " + std::string(name) + " is not a boolean");
    return false;
  }

  // The object field `name`; an empty object if absent.
  const json::object& Object(const json::object& o, std::string_view name) {
    static const json::object kEmpty;
    const json::value* v = o.if_contains(name);
    if (v == nullptr) return kEmpty;
    if (const json::object* obj = v->if_object()) return *obj;
    Fail("field " + std::string(name) + " is not an object");
    return kEmpty;
  }

  const json::array& Array(const json::object& o, std::string_view name) {
    static const json::array kEmpty;
    const json::value* v = o.if_contains(name);
    if (v == nullptr) return kEmpty;
    if (const json::array* a = v->if_array()) return *a;
    Fail("field " + std::string(name) + " is not an array");
    return kEmpty;
  }

  const json::object& AsObject(const json::value& v, std::string_view what) {
    static const json::object kEmpty;
    if (const json::object* o = v.if_object()) return *o;
    Fail(std::string(what) + " is not an object");
    return kEmpty;
  }

  int64_t Revision(const json::object& o) { return Int(Object(o, "header"), "revision"); }

  EtcdKeyValue KeyValue(const json::object& o) {
    EtcdKeyValue kv;
    kv.key = Bytes(o, "key");
    kv.value = Bytes(o, "value");
    kv.create_revision = Int(o, "create_revision");
    kv.mod_revision = Int(o, "mod_revision");
    kv.version = Int(o, "version");
    kv.lease = Int(o, "lease");
    return kv;
  }

  std::vector<EtcdKeyValue> KeyValues(const json::object& o) {
    std::vector<EtcdKeyValue> kvs;
    for (const json::value& v : Array(o, "kvs")) kvs.push_back(KeyValue(AsObject(v, "kv")));
    return kvs;
  }

  void Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

// Sets key and range_end of a range, delete or watch request.
void SetKeyRange(json::object& o, const std::string& key, bool prefix) {
  if (prefix && key.empty()) {  // every key: etcd wants key "\0" and range_end "\0"
    o["key"] = B64(std::string(1, '\0'));
    o["range_end"] = B64(std::string(1, '\0'));
    return;
  }
  o["key"] = B64(key);
  if (prefix) o["range_end"] = B64(EtcdPrefixEnd(key));
}

const char* TargetName(EtcdCompare::Target t) {
  switch (t) {
    case EtcdCompare::Target::kCreateRevision:
      return "CREATE";
    case EtcdCompare::Target::kModRevision:
      return "MOD";
    case EtcdCompare::Target::kVersion:
      return "VERSION";
    case EtcdCompare::Target::kValue:
      return "VALUE";
  }
  return "CREATE";
}

const char* RelationName(EtcdCompare::Relation r) {
  switch (r) {
    case EtcdCompare::Relation::kEqual:
      return "EQUAL";
    case EtcdCompare::Relation::kGreater:
      return "GREATER";
    case EtcdCompare::Relation::kLess:
      return "LESS";
    case EtcdCompare::Relation::kNotEqual:
      return "NOT_EQUAL";
  }
  return "EQUAL";
}

json::object EncodeCompare(const EtcdCompare& c) {
  json::object o;
  o["key"] = B64(c.key);
  o["target"] = TargetName(c.target);
  o["result"] = RelationName(c.relation);
  switch (c.target) {
    case EtcdCompare::Target::kCreateRevision:
      o["create_revision"] = std::to_string(c.number);
      break;
    case EtcdCompare::Target::kModRevision:
      o["mod_revision"] = std::to_string(c.number);
      break;
    case EtcdCompare::Target::kVersion:
      o["version"] = std::to_string(c.number);
      break;
    case EtcdCompare::Target::kValue:
      o["value"] = B64(c.value);
      break;
  }
  return o;
}

json::object EncodeOp(const EtcdOp& op) {
  json::object inner;
  json::object o;
  switch (op.type) {
    case EtcdOp::Type::kPut:
      inner["key"] = B64(op.key);
      inner["value"] = B64(op.value);
      if (op.lease != 0) inner["lease"] = std::to_string(op.lease);
      o["request_put"] = std::move(inner);
      break;
    case EtcdOp::Type::kRange:
      SetKeyRange(inner, op.key, op.prefix);
      o["request_range"] = std::move(inner);
      break;
    case EtcdOp::Type::kDelete:
      SetKeyRange(inner, op.key, op.prefix);
      o["request_delete_range"] = std::move(inner);
      break;
  }
  return o;
}

json::array EncodeOps(const std::vector<EtcdOp>& ops) {
  json::array a;
  for (const EtcdOp& op : ops) a.push_back(EncodeOp(op));
  return a;
}

void EnableKeepalive(tcp::socket& socket) {
  error_code ignored;
  socket.set_option(asio::socket_base::keep_alive(true), ignored);
  const int fd = socket.native_handle();
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &kKeepaliveIdleSeconds, sizeof(int));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &kKeepaliveIntervalSeconds, sizeof(int));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &kKeepaliveProbes, sizeof(int));
}

enum class WatchOutcome { kStopped, kFailed, kRetryWithNewToken };

}  // namespace

struct EtcdClient::Impl {
  explicit Impl(EtcdOptions opts) : options(std::move(opts)), conn(io) {
    for (const std::string& text : options.endpoints) {
      Endpoint ep;
      ep.text = text;
      std::string why;
      if (ParseEtcdEndpoint(text, &ep.host, &ep.port, &why)) {
        ep.authority = ep.host.find(':') == std::string::npos ? ep.host + ":" + ep.port
                                                              : "[" + ep.host + "]:" + ep.port;
      } else {
        ep.bad = "bad endpoint: " + why;
      }
      endpoints.push_back(std::move(ep));
    }
  }
  ~Impl() { conn.Close(); }

  bool NeedsAuth() const { return !options.username.empty(); }

  // Runs attempt(endpoint index, attempt deadline) on the endpoints round robin from `current`,
  // each at most once, until one returns "" (success); each attempt gets an equal share of the
  // time left. False with *error naming every endpoint tried and why.
  template <typename Attempt>
  bool TryEndpoints(const std::string& what, Clock::time_point deadline, Attempt&& attempt,
                    std::string* error) {
    if (endpoints.empty()) {
      *error = "etcd " + what + ": no endpoints configured";
      return false;
    }
    std::string failures;
    const size_t n = endpoints.size();
    for (size_t k = 0; k < n; ++k) {
      const Endpoint& ep = endpoints[current];
      std::string why;
      const auto now = Clock::now();
      if (!ep.bad.empty()) {
        why = ep.bad;
      } else if (now >= deadline) {
        for (size_t j = k; j < n; ++j) {
          failures += (failures.empty() ? "" : "; ") + endpoints[(current + j - k) % n].text +
                      ": not tried, the call's " + Millis(options.request_timeout) +
                      " were used up";
        }
        break;
      } else {
        const auto budget = (deadline - now) / static_cast<int>(n - k);
        why = attempt(current, now + budget);
        if (why.empty()) return true;
        if (why.ends_with("timed out")) why += " after " + Millis(budget);
      }
      failures += (failures.empty() ? "" : "; ") + ep.text + ": " + why;
      current = (current + 1) % n;
    }
    *error = "etcd " + what + " failed on every endpoint (" + failures + ")";
    return false;
  }

  // POSTs `body` to `target` with endpoint failover; any reply but a 5xx is returned.
  bool Post(const std::string& target, const std::string& body, bool with_token,
            Clock::time_point deadline, HttpReply* reply, std::string* error) {
    auto attempt = [&](size_t index, Clock::time_point attempt_deadline) -> std::string {
      if (conn.stream && conn.endpoint != index) conn.Close();
      const Request req = MakeRequest(endpoints[index], target, body, with_token ? token : "");
      std::optional<Parser> parser;
      std::string why = RunBlocking(io, ExchangeCo(conn, endpoints[index], index, req, parser,
                                                   attempt_deadline, /*streaming=*/false));
      if (!why.empty()) return why;
      const bool keep_alive = parser->get().keep_alive();
      reply->status = parser->get().result_int();
      reply->body = std::move(parser->get().body());
      if (!keep_alive) conn.Close();
      if (reply->status >= 500) {
        conn.Close();
        return "HTTP " + std::to_string(reply->status) + ": " + BodyErrorMessage(reply->body);
      }
      return std::string();
    };
    return TryEndpoints(target, deadline, attempt, error);
  }

  bool Authenticate(Clock::time_point deadline, std::string* error) {
    token.clear();
    const std::string what = "authentication as user '" + options.username + "'";
    json::object body;
    body["name"] = options.username;
    body["password"] = options.password;
    HttpReply reply;
    std::string why;
    if (!Post("/v3/auth/authenticate", json::serialize(body), false, deadline, &reply, &why)) {
      *error = "etcd " + what + ": " + why;
      return false;
    }
    if (reply.status != 200) {
      *error = "etcd " + what + " refused: HTTP " + std::to_string(reply.status) + ": " +
               BodyErrorMessage(reply.body);
      return false;
    }
    error_code ec;
    const json::value v = json::parse(reply.body, ec);
    Decoder d;
    if (!ec) token = d.Str(d.AsObject(v, "reply"), "token");
    if (ec || !d.ok() || token.empty()) {
      token.clear();
      *error = "etcd " + what + ": the reply has no token";
      return false;
    }
    return true;
  }

  // POSTs with authentication (re-authenticating once when etcd says the token is invalid).
  bool CallRaw(const std::string& target, const json::object& body, HttpReply* reply,
               std::string* error) {
    const auto deadline = Clock::now() + options.request_timeout;
    bool fresh_token = false;
    if (NeedsAuth() && token.empty()) {
      if (!Authenticate(deadline, error)) return false;
      fresh_token = true;
    }
    const std::string text = json::serialize(body);
    for (;;) {
      if (!Post(target, text, true, deadline, reply, error)) return false;
      if (reply->status == 401 && NeedsAuth() && !fresh_token &&
          IsInvalidToken(BodyErrorMessage(reply->body))) {
        if (!Authenticate(deadline, error)) return false;
        fresh_token = true;
        continue;
      }
      return true;
    }
  }

  // CallRaw, then the reply must be 200 with a JSON object.
  bool Call(const std::string& target, const json::object& body, json::object* out,
            std::string* error) {
    HttpReply reply;
    if (!CallRaw(target, body, &reply, error)) return false;
    if (reply.status != 200) {
      *error = "etcd " + target + ": HTTP " + std::to_string(reply.status) + ": " +
               BodyErrorMessage(reply.body);
      return false;
    }
    error_code ec;
    json::value v = json::parse(reply.body, ec);
    if (ec || !v.is_object()) {
      *error = "etcd " + target + ": malformed reply: " + reply.body.substr(0, 200);
      return false;
    }
    *out = std::move(v.get_object());
    return true;
  }

  static bool Decoded(const std::string& target, const Decoder& d, std::string* error) {
    if (d.ok()) return true;
    *error = "etcd " + target + ": malformed reply: " + d.error();
    return false;
  }

  std::optional<EtcdRangeResult> Range(const std::string& key, bool prefix, std::string* error) {
    json::object body;
    SetKeyRange(body, key, prefix);
    json::object out;
    if (!Call("/v3/kv/range", body, &out, error)) return std::nullopt;
    Decoder d;
    EtcdRangeResult r;
    r.revision = d.Revision(out);
    r.kvs = d.KeyValues(out);
    if (!Decoded("/v3/kv/range", d, error)) return std::nullopt;
    return r;
  }

  WatchOutcome WatchOnce(const std::string& key, bool prefix, const EtcdWatchCallback& on_events,
                         const std::function<bool()>& stop, EtcdWatchEnd* end, std::string* error);

  // Handles one message of a watch stream.
  std::optional<WatchOutcome> OnWatchMessage(const std::string& what, const json::value& msg,
                                             bool may_reauthenticate,
                                             const EtcdWatchCallback& on_events, EtcdWatchEnd* end,
                                             std::string* error);

  EtcdOptions options;
  std::vector<Endpoint> endpoints;
  size_t current = 0;
  std::string token;
  asio::io_context io;
  Connection conn;  // to endpoints[conn.endpoint], kept alive between calls
};

std::optional<WatchOutcome> EtcdClient::Impl::OnWatchMessage(
    const std::string& what, const json::value& msg, bool may_reauthenticate,
    const EtcdWatchCallback& on_events, EtcdWatchEnd* end, std::string* error) {
  Decoder d;
  const json::object& o = d.AsObject(msg, "watch message");
  if (const json::value* e = o.if_contains("error")) {
    *error = what + ": " + ErrorMessage(*e);
    return WatchOutcome::kFailed;
  }
  const json::object& result = d.Object(o, "result");
  const int64_t revision = d.Revision(result);
  const bool created = d.Bool(result, "created");
  const bool canceled = d.Bool(result, "canceled");
  const int64_t compact_revision = d.Int(result, "compact_revision");
  const std::string cancel_reason = d.Str(result, "cancel_reason");
  std::vector<EtcdWatchEvent> events;
  for (const json::value& v : d.Array(result, "events")) {
    const json::object& e = d.AsObject(v, "event");
    EtcdWatchEvent event;
    const std::string type = d.Str(e, "type");
    if (type == "DELETE") {
      event.type = EtcdWatchEvent::Type::kDelete;
    } else if (!type.empty() && type != "PUT") {
      d.Fail("unknown event type " + type);
    }
    event.kv = d.KeyValue(d.Object(e, "kv"));
    events.push_back(std::move(event));
  }
  if (!d.ok()) {
    *error = what + ": malformed message: " + d.error();
    return WatchOutcome::kFailed;
  }
  if (canceled || compact_revision > 0) {
    end->canceled = true;
    end->cancel_reason = cancel_reason;
    end->compact_revision = compact_revision;
    if (may_reauthenticate && NeedsAuth() && IsInvalidToken(cancel_reason)) {
      return WatchOutcome::kRetryWithNewToken;
    }
    if (compact_revision > 0) {
      *error = what + ": revision " + std::to_string(end->resume_revision) +
               " was compacted (the oldest kept is " + std::to_string(compact_revision) +
               "); read the keys again and watch from after that read";
    } else {
      *error = what + ": canceled by etcd" + (cancel_reason.empty() ? "" : ": " + cancel_reason);
    }
    return WatchOutcome::kFailed;
  }
  if (created && end->resume_revision == 0 && revision > 0) end->resume_revision = revision + 1;
  if (!events.empty()) {
    end->resume_revision = events.back().kv.mod_revision + 1;
    on_events(events);
  }
  return std::nullopt;
}

WatchOutcome EtcdClient::Impl::WatchOnce(const std::string& key, bool prefix,
                                         const EtcdWatchCallback& on_events,
                                         const std::function<bool()>& stop, EtcdWatchEnd* end,
                                         std::string* error) {
  const std::string what = std::string("etcd watch on ") + (prefix ? "prefix '" : "key '") + key +
                           "' from revision " + std::to_string(end->resume_revision);
  const auto deadline = Clock::now() + options.request_timeout;
  bool fresh_token = false;
  if (NeedsAuth() && token.empty()) {
    if (!Authenticate(deadline, error)) return WatchOutcome::kFailed;
    fresh_token = true;
  }
  json::object create;
  SetKeyRange(create, key, prefix);
  if (end->resume_revision > 0) create["start_revision"] = std::to_string(end->resume_revision);
  json::object body;
  body["create_request"] = std::move(create);
  const std::string text = json::serialize(body);

  // A connection and io_context of its own: on_events may use the client meanwhile.
  asio::io_context watch_io;
  Connection c(watch_io);
  std::optional<Parser> parser;
  std::string pending;  // stream bytes not parsed yet
  std::function<size_t(uint64_t, beast::string_view, error_code&)> on_chunk =
      [&pending](uint64_t, beast::string_view data, error_code&) {
        pending.append(data.data(), data.size());
        return data.size();
      };
  bool reading = false;
  bool read_failed = false;
  error_code read_error;
  struct Closer {  // closes the connection and runs its aborted read before the locals go
    Connection& c;
    ~Closer() {
      c.Close();
      c.io.restart();
      c.io.run();
    }
  } closer{c};

  unsigned status = 0;
  auto attempt = [&](size_t index, Clock::time_point attempt_deadline) -> std::string {
    const Request req = MakeRequest(endpoints[index], "/v3/watch", text, token);
    std::string why = RunBlocking(watch_io, ExchangeCo(c, endpoints[index], index, req, parser,
                                                       attempt_deadline, /*streaming=*/true));
    if (!why.empty()) return why;
    status = parser->get().result_int();
    if (status == 200) return std::string();
    // An error: read its (short) body.
    c.stream->expires_at(attempt_deadline);
    why = RunBlocking(watch_io, [&]() -> asio::awaitable<std::string> {
      auto [ec, n] = co_await http::async_read(*c.stream, c.buffer, *parser, kNoThrow);
      co_return ec ? "read: " + Describe(ec) : std::string();
    }());
    if (!why.empty()) return why;
    const std::string message =
        "HTTP " + std::to_string(status) + ": " + BodyErrorMessage(parser->get().body());
    c.Close();
    if (status >= 500) return message;
    *error = what + ": " + message;
    return std::string();
  };
  if (!TryEndpoints("watch", deadline, attempt, error)) return WatchOutcome::kFailed;
  if (status != 200) {
    if (status == 401 && NeedsAuth() && !fresh_token && IsInvalidToken(*error)) {
      return WatchOutcome::kRetryWithNewToken;
    }
    return WatchOutcome::kFailed;
  }

  if (!parser->chunked()) {
    *error = what + ": the reply is not a chunked stream";
    return WatchOutcome::kFailed;
  }
  parser->on_chunk_body(on_chunk);
  c.stream->expires_never();
  EnableKeepalive(c.stream->socket());
  json::stream_parser json_parser;
  for (;;) {
    size_t pos = 0;
    while (pos < pending.size()) {
      error_code ec;
      pos += json_parser.write_some(pending.data() + pos, pending.size() - pos, ec);
      if (ec) {
        *error = what + ": malformed stream: " + ec.message();
        return WatchOutcome::kFailed;
      }
      if (json_parser.done()) {
        const json::value msg = json_parser.release();
        json_parser.reset();
        std::optional<WatchOutcome> outcome =
            OnWatchMessage(what, msg, !fresh_token, on_events, end, error);
        if (outcome) return *outcome;
        if (stop()) return WatchOutcome::kStopped;
      }
    }
    pending.clear();
    if (stop()) return WatchOutcome::kStopped;
    if (read_failed || (!reading && parser->is_done())) {
      *error = what + ": " +
               (read_failed && !IsStaleConnectionError(read_error)
                    ? "read: " + Describe(read_error)
                    : std::string("etcd ended the stream"));
      return WatchOutcome::kFailed;
    }
    if (!reading) {
      reading = true;
      http::async_read_some(*c.stream, c.buffer, *parser, [&](const error_code& ec, size_t) {
        reading = false;
        if (ec) {
          read_failed = true;
          read_error = ec;
        }
      });
    }
    watch_io.restart();
    watch_io.run_for(kWatchPoll);
  }
}

EtcdCompare EtcdCompare::CreateRevision(std::string key, Relation relation, int64_t revision) {
  return {std::move(key), Target::kCreateRevision, relation, revision, {}};
}
EtcdCompare EtcdCompare::ModRevision(std::string key, Relation relation, int64_t revision) {
  return {std::move(key), Target::kModRevision, relation, revision, {}};
}
EtcdCompare EtcdCompare::Version(std::string key, Relation relation, int64_t version) {
  return {std::move(key), Target::kVersion, relation, version, {}};
}
EtcdCompare EtcdCompare::Value(std::string key, Relation relation, std::string value) {
  return {std::move(key), Target::kValue, relation, 0, std::move(value)};
}

EtcdOp EtcdOp::Put(std::string key, std::string value, int64_t lease) {
  return {Type::kPut, std::move(key), std::move(value), lease, false};
}
EtcdOp EtcdOp::Range(std::string key) { return {Type::kRange, std::move(key), {}, 0, false}; }
EtcdOp EtcdOp::RangePrefix(std::string prefix) {
  return {Type::kRange, std::move(prefix), {}, 0, true};
}
EtcdOp EtcdOp::Delete(std::string key) { return {Type::kDelete, std::move(key), {}, 0, false}; }
EtcdOp EtcdOp::DeletePrefix(std::string prefix) {
  return {Type::kDelete, std::move(prefix), {}, 0, true};
}

EtcdClient::EtcdClient(EtcdOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
EtcdClient::~EtcdClient() = default;
EtcdClient::EtcdClient(EtcdClient&&) noexcept = default;
EtcdClient& EtcdClient::operator=(EtcdClient&&) noexcept = default;

std::optional<EtcdRangeResult> EtcdClient::Range(const std::string& key, std::string* error) {
  return impl_->Range(key, false, error);
}

std::optional<EtcdRangeResult> EtcdClient::RangePrefix(const std::string& prefix,
                                                       std::string* error) {
  return impl_->Range(prefix, true, error);
}

std::optional<EtcdPutResult> EtcdClient::Put(const std::string& key, const std::string& value,
                                             int64_t lease_id, std::string* error) {
  json::object body;
  body["key"] = B64(key);
  body["value"] = B64(value);
  if (lease_id != 0) body["lease"] = std::to_string(lease_id);
  json::object out;
  if (!impl_->Call("/v3/kv/put", body, &out, error)) return std::nullopt;
  Decoder d;
  EtcdPutResult r;
  r.revision = d.Revision(out);
  if (!Impl::Decoded("/v3/kv/put", d, error)) return std::nullopt;
  return r;
}

std::optional<EtcdDeleteResult> EtcdClient::Delete(const std::string& key, std::string* error) {
  json::object body;
  SetKeyRange(body, key, false);
  json::object out;
  if (!impl_->Call("/v3/kv/deleterange", body, &out, error)) return std::nullopt;
  Decoder d;
  EtcdDeleteResult r;
  r.revision = d.Revision(out);
  r.deleted = d.Int(out, "deleted");
  if (!Impl::Decoded("/v3/kv/deleterange", d, error)) return std::nullopt;
  return r;
}

std::optional<EtcdTxnResult> EtcdClient::Txn(const EtcdTxn& txn, std::string* error) {
  json::object body;
  json::array compare;
  for (const EtcdCompare& c : txn.compare) compare.push_back(EncodeCompare(c));
  body["compare"] = std::move(compare);
  body["success"] = EncodeOps(txn.success);
  body["failure"] = EncodeOps(txn.failure);
  json::object out;
  if (!impl_->Call("/v3/kv/txn", body, &out, error)) return std::nullopt;
  Decoder d;
  EtcdTxnResult r;
  r.revision = d.Revision(out);
  r.succeeded = d.Bool(out, "succeeded");
  for (const json::value& v : d.Array(out, "responses")) {
    const json::object& o = d.AsObject(v, "response");
    EtcdOpResponse response;
    if (o.contains("response_put")) {
      response.type = EtcdOp::Type::kPut;
    } else if (o.contains("response_range")) {
      response.type = EtcdOp::Type::kRange;
      response.kvs = d.KeyValues(d.Object(o, "response_range"));
    } else if (o.contains("response_delete_range")) {
      response.type = EtcdOp::Type::kDelete;
      response.deleted = d.Int(d.Object(o, "response_delete_range"), "deleted");
    } else {
      d.Fail("unknown response " + json::serialize(v));
    }
    r.responses.push_back(std::move(response));
  }
  if (!Impl::Decoded("/v3/kv/txn", d, error)) return std::nullopt;
  return r;
}

std::optional<EtcdLease> EtcdClient::LeaseGrant(int64_t ttl_seconds, std::string* error) {
  json::object body;
  body["TTL"] = std::to_string(ttl_seconds);
  json::object out;
  if (!impl_->Call("/v3/lease/grant", body, &out, error)) return std::nullopt;
  Decoder d;
  EtcdLease lease;
  lease.id = d.Int(out, "ID");
  lease.ttl = d.Int(out, "TTL");
  const std::string refused = d.Str(out, "error");
  if (!Impl::Decoded("/v3/lease/grant", d, error)) return std::nullopt;
  if (!refused.empty() || lease.id == 0) {
    *error = "etcd /v3/lease/grant: " + (refused.empty() ? "no lease ID in the reply" : refused);
    return std::nullopt;
  }
  return lease;
}

std::optional<int64_t> EtcdClient::LeaseKeepAliveOnce(int64_t lease_id, std::string* error) {
  // A stream in gRPC; the gateway answers one request with one {"result": ...} message.
  json::object body;
  body["ID"] = std::to_string(lease_id);
  json::object out;
  if (!impl_->Call("/v3/lease/keepalive", body, &out, error)) return std::nullopt;
  if (const json::value* e = out.if_contains("error")) {
    *error = "etcd /v3/lease/keepalive: " + ErrorMessage(*e);
    return std::nullopt;
  }
  Decoder d;
  const int64_t ttl = d.Int(d.Object(out, "result"), "TTL");  // absent: the lease is gone
  if (!Impl::Decoded("/v3/lease/keepalive", d, error)) return std::nullopt;
  return ttl;
}

bool EtcdClient::LeaseRevoke(int64_t lease_id, std::string* error) {
  json::object body;
  body["ID"] = std::to_string(lease_id);
  HttpReply reply;
  if (!impl_->CallRaw("/v3/lease/revoke", body, &reply, error)) return false;
  if (reply.status == 200) return true;
  const std::string message = BodyErrorMessage(reply.body);
  if (reply.status == 404 && message.find("lease not found") != std::string::npos) return true;
  *error = "etcd /v3/lease/revoke: HTTP " + std::to_string(reply.status) + ": " + message;
  return false;
}

bool EtcdClient::Watch(const std::string& key, bool prefix, int64_t start_revision,
                       const EtcdWatchCallback& on_events, const std::function<bool()>& stop,
                       EtcdWatchEnd* end, std::string* error) {
  EtcdWatchEnd local_end;
  if (end == nullptr) end = &local_end;
  *end = EtcdWatchEnd();
  end->resume_revision = start_revision;
  bool reauthenticated = false;
  for (;;) {
    const WatchOutcome outcome = impl_->WatchOnce(key, prefix, on_events, stop, end, error);
    if (outcome == WatchOutcome::kRetryWithNewToken && !reauthenticated) {
      reauthenticated = true;
      impl_->token.clear();
      end->canceled = false;
      end->cancel_reason.clear();
      end->compact_revision = 0;
      continue;
    }
    if (outcome == WatchOutcome::kRetryWithNewToken) {
      *error = "etcd watch: the authentication token was refused twice";
    }
    return outcome == WatchOutcome::kStopped;
  }
}

const std::string& EtcdClient::CurrentEndpoint() const {
  static const std::string kNone;
  return impl_->endpoints.empty() ? kNone : impl_->endpoints[impl_->current].text;
}

bool ParseEtcdEndpoint(std::string_view text, std::string* host, std::string* port,
                       std::string* error) {
  std::string_view t = text;
  if (t.starts_with("https://")) {
    *error = "'" + std::string(text) + "': https is not supported (plain HTTP only)";
    return false;
  }
  if (t.starts_with("http://")) t.remove_prefix(7);
  if (t.ends_with("/")) t.remove_suffix(1);
  std::string_view h, p;
  if (t.starts_with("[")) {
    const size_t close = t.find(']');
    if (close == std::string_view::npos || close + 1 >= t.size() || t[close + 1] != ':') {
      *error = "'" + std::string(text) + "': expected [address]:port";
      return false;
    }
    h = t.substr(1, close - 1);
    p = t.substr(close + 2);
  } else {
    const size_t colon = t.rfind(':');
    if (colon == std::string_view::npos) {
      *error = "'" + std::string(text) + "': expected host:port";
      return false;
    }
    h = t.substr(0, colon);
    p = t.substr(colon + 1);
    if (h.find(':') != std::string_view::npos) {
      *error = "'" + std::string(text) + "': write an IPv6 address as [address]:port";
      return false;
    }
  }
  unsigned n = 0;
  auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), n);
  if (h.empty() || p.empty() || ec != std::errc() || ptr != p.data() + p.size() || n == 0 ||
      n > 65535) {
    *error = "'" + std::string(text) + "': expected host:port with a port from 1 to 65535";
    return false;
  }
  *host = std::string(h);
  *port = std::string(p);
  return true;
}

std::string EtcdPrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    const auto last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

}  // namespace pgrelay::health
