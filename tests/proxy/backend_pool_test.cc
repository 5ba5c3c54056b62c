// BackendPool with real loopback TCP connections in the process standing in for a node: what
// it hands out (only quiet, open connections with the same key, newest first), what it closes
// (over max_idle, idle too long, node lost, shut down), and that closing says Terminate first.
#include "proxy/backend_pool.h"

#include <gtest/gtest.h>

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::proxy {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class BackendPoolTest : public ::testing::Test {
 protected:
  BackendPoolTest() : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {}

  // A connection from "pgrelay" to the fake node; the node's end goes to node_ends_.
  std::unique_ptr<BackendConnection> Connect() {
    auto conn = std::make_unique<BackendConnection>(io_.get_executor(), &buffers_);
    conn->socket().connect(acceptor_.local_endpoint());
    node_ends_.emplace_back(io_);
    acceptor_.accept(node_ends_.back());
    return conn;
  }

  // Runs the detached Terminate-and-close steps the pool started.
  void Drain() {
    io_.restart();
    io_.run_for(milliseconds(200));
  }

  // What the node end received until the connection closed (`reset`: a close with unread
  // data, which the kernel turns into a reset, also counts).
  std::string ReadToEof(tcp::socket& s, bool reset = false) {
    std::string data(64, '\0');
    error_code ec;
    const size_t n = asio::read(s, asio::buffer(data), ec);
    if (reset && ec == asio::error::connection_reset) ec = asio::error::eof;
    EXPECT_EQ(ec, asio::error::eof);
    data.resize(n);
    return data;
  }

  static BackendLoginParams Params() {
    BackendLoginParams p;
    p.node_name = "pg1";
    p.host = "127.0.0.1";
    p.port = 5432;
    p.user = "app";
    p.database = "db";
    p.options = {{"application_name", "x"}};
    return p;
  }

  asio::io_context io_;
  tcp::acceptor acceptor_;
  BufferPool buffers_;
  std::vector<tcp::socket> node_ends_;
  BackendPool pool_;
};

TEST_F(BackendPoolTest, KeySeparatesEveryLoginDetail) {
  const std::string base = BackendPool::KeyOf(Params());
  EXPECT_EQ(base, BackendPool::KeyOf(Params()));
  std::vector<BackendLoginParams> others(6, Params());
  others[0].host = "127.0.0.2";
  others[1].port = 5433;
  others[2].user = "other";
  others[3].database = "db2";
  others[4].options = {{"application_name", "y"}};
  others[5].tls = std::make_shared<const BackendTls>();
  for (const auto& p : others) EXPECT_NE(base, BackendPool::KeyOf(p));
  // Other backend TLS settings: another key; the same settings (a reload that kept them, a new
  // object): the same key.
  auto tls1 = std::make_shared<BackendTls>();
  auto tls2 = std::make_shared<BackendTls>();
  tls1->identity = std::string("prefer\0\0\0\0", 10);
  tls2->identity = std::string("require\0\0\0\0", 11);
  BackendLoginParams t1 = Params(), t2 = Params();
  t1.tls = tls1;
  t2.tls = tls2;
  EXPECT_NE(BackendPool::KeyOf(t1), BackendPool::KeyOf(t2));
  auto tls3 = std::make_shared<BackendTls>();
  tls3->identity = tls1->identity;
  t2.tls = tls3;
  EXPECT_EQ(BackendPool::KeyOf(t1), BackendPool::KeyOf(t2));
  // Fields are delimited: "ab" + "c" is not "a" + "bc".
  BackendLoginParams a = Params(), b = Params();
  a.user = "ab";
  a.database = "c";
  b.user = "a";
  b.database = "bc";
  EXPECT_NE(BackendPool::KeyOf(a), BackendPool::KeyOf(b));
}

// A ParameterStatus the server sends later replaces the login's value for the next session.
TEST_F(BackendPoolTest, ParameterStatusUpdatesWhatTheNextSessionIsTold) {
  auto status = [](std::string_view name, std::string_view value) {
    std::string m = "S";
    const uint32_t length = static_cast<uint32_t>(4 + name.size() + 1 + value.size() + 1);
    for (int shift = 24; shift >= 0; shift -= 8) m.push_back(static_cast<char>(length >> shift));
    m.append(name).push_back('\0');
    m.append(value).push_back('\0');
    return m;
  };
  BackendConnection conn(io_.get_executor(), &buffers_);
  conn.NoteParameterStatus(status("DateStyle", "ISO, MDY"));
  conn.NoteParameterStatus(status("TimeZone", "UTC"));
  EXPECT_EQ(conn.startup_messages(), status("DateStyle", "ISO, MDY") + status("TimeZone", "UTC"));
  conn.NoteParameterStatus(status("DateStyle", "ISO, DMY"));
  EXPECT_EQ(conn.startup_messages(), status("DateStyle", "ISO, DMY") + status("TimeZone", "UTC"));
  conn.NoteParameterStatus(status("Date", "x"));  // a prefix of another name is another name
  EXPECT_EQ(conn.startup_messages(),
            status("DateStyle", "ISO, DMY") + status("TimeZone", "UTC") + status("Date", "x"));
  conn.NoteParameterStatus("Z\0\0\0\5I");  // not a ParameterStatus: ignored
  EXPECT_EQ(conn.startup_messages(),
            status("DateStyle", "ISO, DMY") + status("TimeZone", "UTC") + status("Date", "x"));
}

TEST_F(BackendPoolTest, TakesTheNewestQuietConnectionWithTheSameKey) {
  auto first = Connect();
  auto second = Connect();
  BackendConnection* second_raw = second.get();
  BackendConnection* first_raw = first.get();
  ASSERT_TRUE(pool_.Park(0, "k", std::move(first), 10));
  ASSERT_TRUE(pool_.Park(0, "k", std::move(second), 10));
  EXPECT_EQ(pool_.Idle(0), 2u);
  EXPECT_EQ(pool_.Take(0, "other"), nullptr);
  EXPECT_EQ(pool_.Take(1, "k"), nullptr);
  auto got = pool_.Take(0, "k");
  EXPECT_EQ(got.get(), second_raw);
  got = pool_.Take(0, "k");
  EXPECT_EQ(got.get(), first_raw);
  EXPECT_EQ(pool_.Take(0, "k"), nullptr);
  EXPECT_EQ(pool_.Idle(), 0u);
}

TEST_F(BackendPoolTest, SkipsConnectionsTheNodeClosedOrWroteTo) {
  auto closed = Connect();
  auto spoke = Connect();
  auto quiet = Connect();
  BackendConnection* quiet_raw = quiet.get();
  ASSERT_TRUE(pool_.Park(0, "k", std::move(quiet), 10));
  ASSERT_TRUE(pool_.Park(0, "k", std::move(closed), 10));
  ASSERT_TRUE(pool_.Park(0, "k", std::move(spoke), 10));
  node_ends_[0].close();  // the server ended it
  // pg_terminate_backend: FATAL ErrorResponse, then (later) the close.
  asio::write(node_ends_[1], asio::buffer(std::string("E\0\0\0\x04", 5)));
  const auto deadline = std::chrono::steady_clock::now() + seconds(2);
  std::unique_ptr<BackendConnection> got;
  while (std::chrono::steady_clock::now() < deadline) {  // loopback delivers at once; be safe
    got = pool_.Take(0, "k");
    if (got.get() == quiet_raw) break;
  }
  EXPECT_EQ(got.get(), quiet_raw);
  EXPECT_EQ(pool_.Idle(0), 0u);
  Drain();
  // The one that spoke was closed by the pool (with its unread bytes: a reset).
  ReadToEof(node_ends_[1], /*reset=*/true);
}

TEST_F(BackendPoolTest, MaxIdleBoundsWhatIsKept) {
  ASSERT_TRUE(pool_.Park(2, "k", Connect(), 2));
  ASSERT_TRUE(pool_.Park(2, "k2", Connect(), 2));
  EXPECT_FALSE(pool_.Park(2, "k", Connect(), 2));
  EXPECT_EQ(pool_.Idle(2), 2u);
  Drain();
  EXPECT_EQ(ReadToEof(node_ends_[2]), std::string("X\0\0\0\x04", 5));
}

TEST_F(BackendPoolTest, SweepClosesIdleTooLongAndLostNodes) {
  ASSERT_TRUE(pool_.Park(0, "k", Connect(), 10));
  ASSERT_TRUE(pool_.Park(1, "k", Connect(), 10));
  const auto now = std::chrono::steady_clock::now();
  pool_.Sweep(now, seconds(60), {false, false});
  EXPECT_EQ(pool_.Idle(), 2u);
  pool_.Sweep(now, seconds(60), {false, true});  // node 1 lost
  EXPECT_EQ(pool_.Idle(0), 1u);
  EXPECT_EQ(pool_.Idle(1), 0u);
  pool_.Sweep(now + seconds(61), seconds(60), {});
  EXPECT_EQ(pool_.Idle(), 0u);
  Drain();
  EXPECT_EQ(ReadToEof(node_ends_[0]), std::string("X\0\0\0\x04", 5));
  EXPECT_EQ(ReadToEof(node_ends_[1]), std::string("X\0\0\0\x04", 5));
}

TEST_F(BackendPoolTest, SweepTrimsTheOldestBeyondALowerMaxIdle) {
  auto oldest = Connect();
  BackendConnection* oldest_raw = oldest.get();
  ASSERT_TRUE(pool_.Park(0, "k", std::move(oldest), 10));
  ASSERT_TRUE(pool_.Park(0, "k", Connect(), 10));
  ASSERT_TRUE(pool_.Park(0, "k", Connect(), 10));
  pool_.Sweep(std::chrono::steady_clock::now(), seconds(60), {}, 2);
  EXPECT_EQ(pool_.Idle(0), 2u);
  Drain();
  EXPECT_EQ(ReadToEof(node_ends_[0]), std::string("X\0\0\0\x04", 5));  // the oldest went
  std::unique_ptr<BackendConnection> a = pool_.Take(0, "k");
  std::unique_ptr<BackendConnection> b = pool_.Take(0, "k");
  EXPECT_NE(a.get(), oldest_raw);
  EXPECT_NE(b.get(), oldest_raw);
  EXPECT_NE(b, nullptr);
}

TEST_F(BackendPoolTest, ShutClosesEverythingAndRefusesMore) {
  ASSERT_TRUE(pool_.Park(0, "k", Connect(), 10));
  pool_.Shut();
  EXPECT_EQ(pool_.Idle(), 0u);
  EXPECT_FALSE(pool_.Park(0, "k", Connect(), 10));
  EXPECT_EQ(pool_.Idle(), 0u);
  Drain();
  EXPECT_EQ(ReadToEof(node_ends_[0]), std::string("X\0\0\0\x04", 5));
  EXPECT_EQ(ReadToEof(node_ends_[1]), std::string("X\0\0\0\x04", 5));
}

}  // namespace
}  // namespace pgrelay::proxy
