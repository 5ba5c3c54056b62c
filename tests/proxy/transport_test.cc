// Transport's reads on plain TCP (loopback sockets inside the process): a peer that sends its
// last bytes and closes at once (a server's FATAL before it exits, a client that writes and
// quits) is seen to close right after its data, however the data and the FIN arrive, both by
// ReadSome and by RelayRead, which skips the read that would return EAGAIN after a read that
// emptied the socket (proxy/relay_read.h). A read that skipped it after any short read waits
// forever in the first and third cases with edge-triggered epoll (the reverted "draining
// reads", docs/benchmarks.md): any cheaper read path must keep these passing.
#include "proxy/transport.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/write.hpp>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>

namespace pgrelay::proxy {
namespace {

struct Outcome {
  std::string data;  // everything read before the end of the stream
  error_code end;    // how the stream ended
  bool ended = false;
};

class TransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tcp::acceptor acceptor(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    peer_.connect(acceptor.local_endpoint());
    tcp::socket accepted(io_);
    acceptor.accept(accepted);
    transport_.emplace(std::move(accepted));
  }

  // Reads until the stream ends, as the relay's pumps do.
  awaitable<void> ReadToEnd(Outcome* out) {
    char buf[4096];
    for (;;) {
      auto [ec, n] = co_await transport_->ReadSome(asio::buffer(buf));
      if (ec) {
        out->end = ec;
        out->ended = true;
        co_return;
      }
      out->data.append(buf, n);
    }
  }

  // Reads until the stream ends as the relay's pumps do, with RelayRead: the bytes read stay
  // in `out->data`, so every read starts at a message boundary when they are whole messages.
  awaitable<void> RelayReadToEnd(Outcome* out, RelayPeer peer) {
    std::string buf(4096, '\0');
    size_t used = 0;
    for (;;) {
      auto [ec, n] = co_await transport_->RelayRead(
          asio::buffer(buf.data() + used, buf.size() - used), buf.data(), peer);
      if (ec) {
        out->end = ec;
        out->ended = true;
        co_return;
      }
      used += n;
      out->data.assign(buf.data(), used);
    }
  }

  bool RunUntilEnded(const Outcome& out) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!out.ended && std::chrono::steady_clock::now() < deadline) {
      io_.run_one_for(std::chrono::milliseconds(50));
    }
    return out.ended;
  }

  void SendAndClose(const std::string& bytes) {
    asio::write(peer_, asio::buffer(bytes));
    peer_.close();
  }

  asio::io_context io_{1};
  asio::io_context peer_io_;
  tcp::socket peer_{peer_io_};  // blocking, the other end
  std::optional<Transport> transport_;
};

TEST_F(TransportTest, DataAndCloseArrivingTogetherEndTheStream) {
  // Both are queued before the first read: one readiness event covers data and FIN.
  SendAndClose("FATAL: terminating connection");
  usleep(20'000);
  Outcome out;
  asio::co_spawn(io_, ReadToEnd(&out), asio::detached);
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, "FATAL: terminating connection");
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, CloseRightAfterAReadIsPendingEndsTheStream) {
  Outcome out;
  asio::co_spawn(io_, ReadToEnd(&out), asio::detached);
  io_.poll();  // the read is now waiting in the reactor
  SendAndClose("last words");
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, "last words");
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, ShortReadThenCloseArrivingTogetherEndsTheStream) {
  // A first short read drains the socket; then the next data and the FIN arrive in one batch
  // while the relay is busy elsewhere (the reactor does not run in between).
  asio::write(peer_, asio::buffer(std::string("first")));
  usleep(20'000);
  Outcome out;
  asio::co_spawn(io_, ReadToEnd(&out), asio::detached);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (out.data.empty() && std::chrono::steady_clock::now() < deadline) {
    io_.run_one_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(out.data, "first");
  SendAndClose(" and last");
  usleep(20'000);
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, "first and last");
  EXPECT_EQ(out.end, asio::error::eof);
}

// Protocol messages: after these the peer waits for an answer.
const std::string kReadyForQuery("Z\0\0\0\5I", 6);
const std::string kSync("S\0\0\0\4", 5);

std::string Query(const std::string& sql) {
  std::string m = "Q";
  const uint32_t len = static_cast<uint32_t>(4 + sql.size() + 1);
  for (int shift = 24; shift >= 0; shift -= 8) m.push_back(static_cast<char>(len >> shift));
  m += sql;
  m.push_back('\0');
  return m;
}

TEST_F(TransportTest, RelayReadSeesACloseThatCameWithAnAwaitedAnswer) {
  // The read that gets the ReadyForQuery empties the socket, but the FIN is pending: TCP_INQ
  // counts it, so the reactor is not told the socket is exhausted.
  SendAndClose(kReadyForQuery);
  usleep(20'000);
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out, RelayPeer::kServer), asio::detached);
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, kReadyForQuery);
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, RelayReadSeesACloseRightAfterAReadIsPending) {
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out, RelayPeer::kClient), asio::detached);
  io_.poll();
  SendAndClose(Query("select 1"));
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, Query("select 1"));
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, RelayReadSeesAnAwaitedAnswerThenACloseArrivingTogether) {
  // The first read is exhausted (a whole ReadyForQuery, nothing left): the next one waits for
  // readiness, and the next data with the FIN must wake it and be read to the end.
  asio::write(peer_, asio::buffer(kReadyForQuery));
  usleep(20'000);
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out, RelayPeer::kServer), asio::detached);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (out.data.empty() && std::chrono::steady_clock::now() < deadline) {
    io_.run_one_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(out.data, kReadyForQuery);
  SendAndClose(kReadyForQuery);
  usleep(20'000);
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, kReadyForQuery + kReadyForQuery);
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, RelayReadWakesForDataAfterAnExhaustedRead) {
  // Request and answer, three times: each read after an exhausted one waits in the reactor.
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out, RelayPeer::kClient), asio::detached);
  io_.poll();
  std::string expected;
  for (int i = 0; i < 3; ++i) {
    const std::string m = Query("select " + std::to_string(i)) + kSync;
    asio::write(peer_, asio::buffer(m));
    expected += m;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (out.data.size() < expected.size() && std::chrono::steady_clock::now() < deadline) {
      io_.run_one_for(std::chrono::milliseconds(50));
    }
    ASSERT_EQ(out.data, expected);
  }
  peer_.close();
  ASSERT_TRUE(RunUntilEnded(out));
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, RelayReadSeesAResetAfterAPartialMessage) {
  // A reset is not in TCP_INQ's count, so only a read that ends where the peer waits for an
  // answer may be exhausted; after half a message the next read tries the socket and fails.
  const std::string half = Query("select 1").substr(0, 7);
  asio::write(peer_, asio::buffer(half));
  peer_.set_option(asio::socket_base::linger(true, 0));
  peer_.close();  // RST
  usleep(20'000);
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out, RelayPeer::kClient), asio::detached);
  ASSERT_TRUE(RunUntilEnded(out)) << "the reset was not seen";
  EXPECT_TRUE(out.end == asio::error::connection_reset || out.end == asio::error::eof)
      << out.end.message();
}

TEST_F(TransportTest, AResetThatCameWithAnAwaitedRequestShowsWhenTheAnswerIsWritten) {
  // After a whole Query the read is exhausted even with a reset behind it; the relay then
  // writes the answer, and that write fails.
  asio::write(peer_, asio::buffer(Query("select 1")));
  peer_.set_option(asio::socket_base::linger(true, 0));
  peer_.close();  // RST
  usleep(20'000);
  char buf[64];
  auto [ec, n] = [&] {
    std::tuple<error_code, size_t> r;
    asio::co_spawn(
        io_,
        [&]() -> awaitable<void> {
          r = co_await transport_->RelayRead(asio::buffer(buf), buf, RelayPeer::kClient);
        },
        asio::detached);
    io_.run_for(std::chrono::seconds(1));
    return r;
  }();
  if (!ec) {
    EXPECT_EQ(std::string(buf, n), Query("select 1"));
  }
  error_code write_ec;
  transport_->WriteNow(asio::buffer(kReadyForQuery), write_ec);
  EXPECT_TRUE(write_ec) << "a write to a reset connection succeeded";
}

TEST(PeerAwaitsAnswer, AServerAwaitsOnlyWhenItOwesNoMoreReplies) {
  std::string b = kReadyForQuery + kReadyForQuery;
  size_t owed = 3;
  auto owed_fn = [](const void* c) { return *static_cast<const size_t*>(c); };
  auto awaits = [&] {
    return PeerAwaitsAnswer(RelayReadBuffer(asio::buffer(b.data(), b.size()), b.data(),
                                            RelayPeer::kServer, owed_fn, &owed),
                            b.size());
  };
  EXPECT_FALSE(awaits()) << "two ReadyForQuery, three owed: a pipelined query is still out";
  owed = 2;
  EXPECT_TRUE(awaits());
  owed = 1;
  EXPECT_TRUE(awaits());
}

TEST_F(TransportTest, PerformRelayReadReportsExhaustedOnlyWhenNothingIsLeft) {
  ASSERT_TRUE(EnableInq(transport_->socket().native_handle()));
  transport_->socket().non_blocking(true);
  const int fd = transport_->socket().native_handle();
  char buf[64];
  auto read = [&](error_code& ec, size_t& n) {
    return PerformRelayRead(fd, RelayReadBuffer(asio::buffer(buf), buf, RelayPeer::kServer), ec, n);
  };
  error_code ec;
  size_t n = 0;
  EXPECT_EQ(read(ec, n), RelayReadStatus::kNotDone) << "nothing to read yet";
  asio::write(peer_, asio::buffer(kReadyForQuery));
  usleep(20'000);
  EXPECT_EQ(read(ec, n), RelayReadStatus::kExhausted) << "a whole ReadyForQuery, nothing left";
  EXPECT_EQ(n, kReadyForQuery.size());
  asio::write(peer_, asio::buffer(kReadyForQuery.substr(0, 3)));
  usleep(20'000);
  EXPECT_EQ(read(ec, n), RelayReadStatus::kDone) << "half a message";
  asio::write(peer_, asio::buffer(kReadyForQuery.substr(3)));
  SendAndClose(kReadyForQuery);
  usleep(20'000);
  // The buffer starts mid-message now: read the rest into a fresh one at a boundary.
  char rest[64];
  std::memcpy(rest, buf, 3);
  ec.clear();
  n = 0;
  EXPECT_EQ(
      PerformRelayRead(
          fd, RelayReadBuffer(asio::buffer(rest + 3, sizeof rest - 3), rest, RelayPeer::kServer),
          ec, n),
      RelayReadStatus::kDone)
      << "whole messages, but the close behind them is pending";
  EXPECT_EQ(n, 3 + kReadyForQuery.size());
  EXPECT_EQ(read(ec, n), RelayReadStatus::kExhausted);
  EXPECT_EQ(ec, asio::error::eof);
}

TEST(PeerAwaitsAnswer, WholeMessagesEndingWhereThePeerWaits) {
  auto awaits = [](const std::string& bytes, RelayPeer peer, size_t already = 0) {
    std::string b = bytes;
    return PeerAwaitsAnswer(
        RelayReadBuffer(asio::buffer(b.data() + already, b.size() - already), b.data(), peer),
        b.size() - already);
  };
  const std::string parse("P\0\0\0\x08\0s\0", 9);  // Parse, not a full one, but 9 bytes
  EXPECT_TRUE(awaits(Query("select 1"), RelayPeer::kClient));
  EXPECT_TRUE(awaits(parse + kSync, RelayPeer::kClient));
  EXPECT_TRUE(awaits(parse + kSync, RelayPeer::kClient, 3));  // the first 3 bytes read before
  EXPECT_FALSE(awaits(parse, RelayPeer::kClient)) << "a Parse without Sync";
  EXPECT_FALSE(awaits(Query("select 1").substr(0, 8), RelayPeer::kClient)) << "half a Query";
  EXPECT_FALSE(awaits(kSync.substr(1), RelayPeer::kClient)) << "not at a message boundary";
  EXPECT_TRUE(awaits(kReadyForQuery, RelayPeer::kServer));
  EXPECT_TRUE(awaits(std::string("C\0\0\0\x0bSELECT\0", 12) + kReadyForQuery, RelayPeer::kServer));
  EXPECT_FALSE(awaits(kReadyForQuery, RelayPeer::kClient));
  EXPECT_FALSE(awaits(kSync, RelayPeer::kServer));
  EXPECT_FALSE(awaits(std::string("H\0\0\0\4", 5), RelayPeer::kClient))
      << "Flush: the server may answer it with nothing";
  // A DataRow whose last bytes look like a ReadyForQuery is not one.
  const std::string row = std::string("D\0\0\0\x10\0\1\0\0\0\6", 11) + kReadyForQuery;
  EXPECT_FALSE(awaits(row, RelayPeer::kServer));
  std::string b = kReadyForQuery;
  EXPECT_FALSE(PeerAwaitsAnswer(
      RelayReadBuffer(asio::buffer(b.data(), b.size()), nullptr, RelayPeer::kServer), b.size()))
      << "inside a streamed message";
}

}  // namespace
}  // namespace pgrelay::proxy
