// AdminServer over loopback (port 0, no other network): endpoints, token, bounds, shutdown.
#include "proxy/admin/admin_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <cctype>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "proxy/admin/metrics.h"

namespace pgrelay::admin {
namespace {

namespace json = boost::json;

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// A blocking loopback client with a receive timeout, so a server that hangs fails the test.
class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error("connect failed");
    }
  }
  ~Client() { close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void Send(const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      ssize_t n = send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return;  // the server may have closed already
      sent += n;
    }
  }

  // Reads one response; nullopt if the connection closed (or timed out) first.
  std::optional<HttpResponse> Read(bool head = false) {
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return std::nullopt;
    }
    HttpResponse r;
    std::string header = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    size_t line_end = header.find("\r\n");
    std::string status_line = header.substr(0, line_end);
    if (status_line.size() < 12) return std::nullopt;
    r.status = std::stoi(status_line.substr(9, 3));
    size_t pos = line_end == std::string::npos ? header.size() : line_end + 2;
    while (pos < header.size()) {
      size_t next = header.find("\r\n", pos);
      if (next == std::string::npos) next = header.size();
      std::string line = header.substr(pos, next - pos);
      size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(), ::tolower);
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(' '));
      r.headers[name] = value;
      pos = next + 2;
    }
    size_t length = r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    if (head) length = 0;
    while (buffer_.size() < length) {
      if (!Fill()) return std::nullopt;
    }
    r.body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    return r;
  }

  // True if the server closes the connection (EOF or reset) before `seconds`.
  bool ClosedWithin(double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      char c;
      ssize_t n = recv(fd_, &c, 1, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        return true;
      }
    }
    return false;
  }

 private:
  bool Fill() {
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return false;
    buffer_.append(buf, n);
    return true;
  }

  int fd_ = -1;
  std::string buffer_;
};

HttpResponse Request(uint16_t port, const std::string& method, const std::string& target,
                     const std::string& extra_headers = "") {
  Client c(port);
  c.Send(method + " " + target + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" +
         extra_headers + "Content-Length: 0\r\n\r\n");
  std::optional<HttpResponse> r = c.Read(method == "HEAD");
  if (!r) throw std::runtime_error("no response to " + method + " " + target);
  return *r;
}

std::shared_ptr<const health::Topology> TwoNodes(bool with_primary) {
  auto t = std::make_shared<health::Topology>();
  t->version = 12;
  t->epoch = 3;
  health::NodeStatus pg1;
  pg1.name = "pg1";
  pg1.host = "127.0.0.1";
  pg1.port = 5432;
  pg1.state = with_primary ? health::NodeHealth::kUp : health::NodeHealth::kDown;
  pg1.role = health::NodeRole::kPrimary;
  pg1.up = with_primary;
  pg1.current_lsn = (uint64_t{0x1} << 32) | 0x3000060;
  pg1.timeline = 2;
  pg1.replay_lag_bytes = 0;
  pg1.last_probe = std::chrono::steady_clock::now();
  if (!with_primary) pg1.last_error = "connection refused";
  health::NodeStatus pg2;
  pg2.name = "pg2";
  pg2.host = "127.0.0.1";
  pg2.port = 5433;
  pg2.state = health::NodeHealth::kUp;
  pg2.role = health::NodeRole::kReplica;
  pg2.up = true;
  pg2.receive_lsn = 0x3000060;
  pg2.replay_lsn = 0x3000000;
  pg2.wal_receiver_streaming = true;
  pg2.replay_lag_bytes = 96;
  pg2.replay_lag_seconds = 0.5;
  t->nodes = {pg1, pg2};
  t->primary = with_primary ? 0 : -1;
  t->replicas = {1};
  return t;
}

class AdminServerTest : public ::testing::Test {
 protected:
  void StartServer(AdminOptions options = {}) {
    options.listen = {"127.0.0.1", 0};
    counter_ = registry_.AddCounter("test_requests_total", "Test counter.");
    registry_.Freeze(1);
    registry_.shard(0).Inc(counter_.At(), 5);
    AdminSources sources;
    sources.topology = [this] { return topology_.load(); };
    sources.metrics = &registry_;
    sources.client_connections = [] { return int64_t{4}; };
    sources.backend_connections = [] { return std::vector<int64_t>{3, 1}; };
    server_ = std::make_unique<AdminServer>(std::move(options), std::move(sources));
    server_->Start();
    port_ = server_->port();
    ASSERT_NE(port_, 0);
  }

  std::atomic<std::shared_ptr<const health::Topology>> topology_{TwoNodes(true)};
  Registry registry_;
  CounterFamily counter_;
  std::unique_ptr<AdminServer> server_;
  uint16_t port_ = 0;
};

TEST_F(AdminServerTest, HealthzAndMetrics) {
  StartServer();
  HttpResponse r = Request(port_, "GET", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok\n");
  r = Request(port_, "GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(r.body, registry_.Render());
  EXPECT_NE(r.body.find("test_requests_total 5\n"), std::string::npos);
  r = Request(port_, "GET", "/metrics?name[]=x");  // query strings are ignored
  EXPECT_EQ(r.status, 200);
}

TEST_F(AdminServerTest, HeadHasTheHeadersButNoBody) {
  StartServer();
  Client c(port_);
  c.Send("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  std::optional<HttpResponse> head = c.Read(/*head=*/true);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->Header("content-length"), "3");
  // Had the server sent a body, it would show up in front of the next response.
  std::optional<HttpResponse> get = c.Read();
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(get->body, "ok\n");
}

TEST_F(AdminServerTest, ReadyzFollowsThePrimary) {
  StartServer();
  HttpResponse r = Request(port_, "GET", "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ready: primary pg1 (up), epoch 3\n");
  topology_ = TwoNodes(false);
  r = Request(port_, "GET", "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body,
            "not ready: no primary is known (pg1: down primary - connection refused, pg2: up "
            "replica)\n");
  topology_ = std::shared_ptr<const health::Topology>();
  r = Request(port_, "GET", "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, "not ready: no health check has completed yet\n");
}

TEST_F(AdminServerTest, ClusterIsJson) {
  StartServer();
  HttpResponse r = Request(port_, "GET", "/cluster");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-type"), "application/json");
  const json::value v = json::parse(r.body);
  const json::object& root = v.as_object();
  EXPECT_EQ(root.at("version").to_number<int>(), 12);
  EXPECT_EQ(root.at("epoch").to_number<int>(), 3);
  EXPECT_EQ(root.at("primary").as_string(), "pg1");
  EXPECT_EQ(root.at("primary_conflict").as_bool(), false);
  EXPECT_EQ(root.at("client_connections").as_int64(), 4);
  const json::array& nodes = root.at("nodes").as_array();
  ASSERT_EQ(nodes.size(), 2u);
  const json::object& pg1 = nodes[0].as_object();
  EXPECT_EQ(pg1.at("name").as_string(), "pg1");
  EXPECT_EQ(pg1.at("host").as_string(), "127.0.0.1");
  EXPECT_EQ(pg1.at("port").to_number<int>(), 5432);
  EXPECT_EQ(pg1.at("state").as_string(), "up");
  EXPECT_EQ(pg1.at("role").as_string(), "primary");
  EXPECT_EQ(pg1.at("current_lsn").as_string(), "1/3000060");
  EXPECT_TRUE(pg1.at("receive_lsn").is_null());
  EXPECT_EQ(pg1.at("timeline").to_number<int>(), 2);
  EXPECT_EQ(pg1.at("replay_lag_bytes").to_number<int>(), 0);
  EXPECT_TRUE(pg1.at("replay_lag_seconds").is_null());
  EXPECT_TRUE(pg1.at("last_error").is_null());
  EXPECT_GE(pg1.at("last_probe_age_seconds").to_number<double>(), 0);
  EXPECT_EQ(pg1.at("backend_connections").as_int64(), 3);
  const json::object& pg2 = nodes[1].as_object();
  EXPECT_EQ(pg2.at("role").as_string(), "replica");
  EXPECT_EQ(pg2.at("replay_lsn").as_string(), "0/3000000");
  EXPECT_EQ(pg2.at("replay_lag_bytes").to_number<int>(), 96);
  EXPECT_EQ(pg2.at("replay_lag_seconds").to_number<double>(), 0.5);
  EXPECT_EQ(pg2.at("wal_receiver_streaming").as_bool(), true);
  EXPECT_TRUE(pg2.at("last_probe_age_seconds").is_null());
  EXPECT_TRUE(pg2.at("timeline").is_null());
}

TEST_F(AdminServerTest, MutatingEndpointsNeedTheToken) {
  AdminOptions options;
  options.token = "t0ps3cret";
  StartServer(options);
  for (const char* path : {"/pause", "/resume", "/reload", "/switchover?to=pg2"}) {
    HttpResponse r = Request(port_, "POST", path);
    EXPECT_EQ(r.status, 401) << path;
    EXPECT_EQ(r.Header("www-authenticate"), "Bearer realm=\"pgrelay\"");
    r = Request(port_, "POST", path, "Authorization: Bearer wrong\r\n");
    EXPECT_EQ(r.status, 401) << path;
    EXPECT_EQ(r.body, "invalid token\n");
    r = Request(port_, "POST", path, "Authorization: Bearer t0ps3cret-and-more\r\n");
    EXPECT_EQ(r.status, 401) << path;
    r = Request(port_, "POST", path, "Authorization: Basic dDBwczNjcmV0\r\n");
    EXPECT_EQ(r.status, 401) << path;
    r = Request(port_, "POST", path, "Authorization: bearer t0ps3cret\r\n");
    EXPECT_EQ(r.status, 501) << path;
    EXPECT_NE(r.body.find("not implemented"), std::string::npos) << r.body;
  }
  // Reading needs no token.
  EXPECT_EQ(Request(port_, "GET", "/cluster").status, 200);
}

TEST_F(AdminServerTest, WithoutATokenOnLoopbackActionsAreOpen) {
  StartServer();
  EXPECT_EQ(Request(port_, "POST", "/reload").status, 501);
}

TEST(AdminServerActionTest, ActionHandlerGetsPathAndQuery) {
  AdminOptions options;
  options.listen = {"127.0.0.1", 0};
  options.token = "tok";
  AdminSources sources;
  std::string seen;
  sources.on_action = [&](std::string_view action, std::string_view query) {
    seen = std::string(action) + "|" + std::string(query);
    return ActionResult{409, "busy\n"};
  };
  AdminServer server(options, sources);
  server.Start();
  HttpResponse r =
      Request(server.port(), "POST", "/switchover?to=pg2", "Authorization: Bearer tok\r\n");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.body, "busy\n");
  EXPECT_EQ(seen, "switchover|to=pg2");
  // No topology, no registry: the read endpoints say so instead of crashing.
  EXPECT_EQ(Request(server.port(), "GET", "/metrics").status, 503);
  EXPECT_EQ(Request(server.port(), "GET", "/cluster").status, 503);
  EXPECT_EQ(Request(server.port(), "GET", "/readyz").status, 503);
}

TEST_F(AdminServerTest, WrongMethodsAndPaths) {
  StartServer();
  HttpResponse r = Request(port_, "POST", "/metrics");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.Header("allow"), "GET, HEAD");
  r = Request(port_, "GET", "/reload");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.Header("allow"), "POST");
  r = Request(port_, "DELETE", "/cluster");
  EXPECT_EQ(r.status, 405);
  r = Request(port_, "GET", "/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(r.body.find("GET /metrics"), std::string::npos);
  r = Request(port_, "GET", "/metrics/");
  EXPECT_EQ(r.status, 404);
  r = Request(port_, "OPTIONS", "*");
  EXPECT_EQ(r.status, 400);
}

TEST_F(AdminServerTest, MalformedRequestsGet400AndTheServerLivesOn) {
  StartServer();
  for (const std::string& garbage :
       {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n"),
        std::string("GET\r\n\r\n"),
        std::string("GET /healthz HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
        std::string("GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n")}) {
    Client c(port_);
    c.Send(garbage);
    std::optional<HttpResponse> r = c.Read();
    ASSERT_TRUE(r) << garbage;
    EXPECT_EQ(r->status, 400) << garbage;
    EXPECT_EQ(r->Header("connection"), "close");
    EXPECT_TRUE(c.ClosedWithin(2));
  }
  EXPECT_EQ(Request(port_, "GET", "/healthz").status, 200);
}

TEST_F(AdminServerTest, RequestSizeIsBounded) {
  AdminOptions options;
  options.max_header_bytes = 1024;
  options.max_body_bytes = 100;
  StartServer(options);
  {
    Client c(port_);
    c.Send("GET /healthz HTTP/1.1\r\nX-Big: " + std::string(4000, 'a') + "\r\n\r\n");
    std::optional<HttpResponse> r = c.Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 431);
  }
  {
    Client c(port_);
    c.Send("POST /reload HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'b'));
    std::optional<HttpResponse> r = c.Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 413);
  }
  EXPECT_EQ(Request(port_, "GET", "/healthz").status, 200);
}

TEST_F(AdminServerTest, KeepAliveServesSeveralRequests) {
  StartServer();
  Client c(port_);
  for (int i = 0; i < 3; ++i) {
    c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    std::optional<HttpResponse> r = c.Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
}

TEST_F(AdminServerTest, SlowAndIdleClientsAreCutOff) {
  AdminOptions options;
  options.request_timeout = std::chrono::milliseconds(300);
  StartServer(options);
  Client slow(port_);
  slow.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n");  // never finishes the header
  Client idle(port_);
  EXPECT_TRUE(slow.ClosedWithin(3));
  EXPECT_TRUE(idle.ClosedWithin(3));
}

TEST_F(AdminServerTest, ConnectionsBeyondTheLimitAreClosed) {
  AdminOptions options;
  options.max_connections = 2;
  StartServer(options);
  Client a(port_);
  Client b(port_);
  a.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  b.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(a.Read());  // both are being served (keep-alive)
  ASSERT_TRUE(b.Read());
  Client c(port_);
  EXPECT_TRUE(c.ClosedWithin(3));
}

TEST_F(AdminServerTest, StopEndsOpenConnectionsPromptly) {
  StartServer();
  Client idle(port_);
  Client half(port_);
  half.Send("GET /hea");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto start = std::chrono::steady_clock::now();
  server_->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_TRUE(idle.ClosedWithin(1));
  EXPECT_TRUE(half.ClosedWithin(1));
  server_->Stop();  // idempotent
}

TEST(AdminServerStartTest, RefusesNonLoopbackWithoutToken) {
  AdminOptions options;
  options.listen = {"0.0.0.0", 0};
  AdminServer server(options, {});
  try {
    server.Start();
    FAIL() << "started on 0.0.0.0 without a token";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not a loopback address and no admin token is set"),
              std::string::npos)
        << e.what();
  }
}

TEST(AdminServerStartTest, ReportsBindErrors) {
  AdminOptions options;
  options.listen = {"127.0.0.1", 0};
  AdminServer first(options, {});
  first.Start();
  options.listen.port = first.port();
  AdminServer second(options, {});
  try {
    second.Start();
    FAIL() << "bound a port in use";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot listen on admin.listen 127.0.0.1:"),
              std::string::npos)
        << e.what();
  }
  options.listen = {"not-an-ip", 0};
  options.token = "x";
  AdminServer third(options, {});
  EXPECT_THROW(third.Start(), std::runtime_error);
}

TEST(AdminServerStartTest, LoopbackHosts) {
  EXPECT_TRUE(config::IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(config::IsLoopbackHost("127.1.2.3"));
  EXPECT_TRUE(config::IsLoopbackHost("::1"));
  EXPECT_TRUE(config::IsLoopbackHost("localhost"));
  EXPECT_FALSE(config::IsLoopbackHost("0.0.0.0"));
  EXPECT_FALSE(config::IsLoopbackHost("::"));
  EXPECT_FALSE(config::IsLoopbackHost("10.0.0.1"));
  EXPECT_FALSE(config::IsLoopbackHost("example.com"));
}

}  // namespace
}  // namespace pgrelay::admin
