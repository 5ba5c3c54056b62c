// Transport's reads on plain TCP (loopback sockets inside the process): a peer that sends its
// last bytes and closes at once (a server's FATAL before it exits, a client that writes and
// quits) is seen to close right after its data, however the data and the FIN arrive, both by
// ReadSome (Asio's speculative reads) and by the relay's ReadNow / WaitReadable, which waits
// first after a drained read. A read path that waited after every short read would wait
// forever in the first and third cases with edge-triggered epoll (the reverted "draining
// reads", docs/benchmarks.md 03:31): TCP_INQ is what tells "drained" from "drained, close
// pending".
#include "proxy/transport.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/write.hpp>
#include <chrono>
#include <optional>
#include <string>

namespace pgrelay::proxy {
namespace {

struct Outcome {
  std::string data;  // everything read before the end of the stream
  error_code end;    // how the stream ended
  bool ended = false;
  int waits = 0;  // readiness waits (relay reads)
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

  // Reads until the stream ends as the relay's pumps do on plain TCP: after a read that left
  // the socket drained, it waits for readiness before the next read (no co_await in between).
  awaitable<void> RelayReadToEnd(Outcome* out) {
    char buf[4096];
    EXPECT_TRUE(transport_->RelayReads());
    bool wait_first = false;
    for (;;) {
      error_code ec = asio::error::would_block;
      size_t n = wait_first ? 0 : transport_->ReadNow(asio::buffer(buf), ec);
      while (ec == asio::error::would_block) {
        ++out->waits;
        auto [waited] = co_await transport_->WaitReadable();
        ec = waited;
        if (!ec) n = transport_->ReadNow(asio::buffer(buf), ec);
      }
      if (ec) {
        out->end = ec;
        out->ended = true;
        co_return;
      }
      out->data.append(buf, n);
      wait_first = transport_->drained();
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

TEST_F(TransportTest, RelayReadsSeeDataAndCloseArrivingTogether) {
  SendAndClose("FATAL: terminating connection");
  usleep(20'000);
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out), asio::detached);
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, "FATAL: terminating connection");
  EXPECT_EQ(out.end, asio::error::eof);
  EXPECT_EQ(out.waits, 0) << "the pending close was known from the read (TCP_INQ)";
}

TEST_F(TransportTest, RelayReadsSeeACloseRightAfterAReadIsPending) {
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out), asio::detached);
  io_.poll();  // the read is now waiting in the reactor
  SendAndClose("last words");
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, "last words");
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, RelayReadsSeeAShortReadThenCloseArrivingTogether) {
  asio::write(peer_, asio::buffer(std::string("first")));
  usleep(20'000);
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out), asio::detached);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (out.data.empty() && std::chrono::steady_clock::now() < deadline) {
    io_.run_one_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(out.data, "first");
  const int waits = out.waits;
  SendAndClose(" and last");
  usleep(20'000);
  ASSERT_TRUE(RunUntilEnded(out)) << "the close after the last data was not seen";
  EXPECT_EQ(out.data, "first and last");
  EXPECT_EQ(out.end, asio::error::eof);
  EXPECT_EQ(out.waits, waits) << "the data that came with the close needs no wait after it";
}

TEST_F(TransportTest, DrainedReadsWaitWithoutTryingTheSocket) {
  // The saving: after a read that emptied the socket the next one waits for readiness, and
  // each message then costs one wait and one read. Data that arrives while nobody waits (the
  // reactor not running) is read at once: it was there before the wait was queued.
  Outcome out;
  asio::co_spawn(io_, RelayReadToEnd(&out), asio::detached);
  io_.poll();
  for (int i = 0; i < 3; ++i) {
    asio::write(peer_, asio::buffer(std::string("msg")));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (out.data.size() < 3 * static_cast<size_t>(i + 1) &&
           std::chrono::steady_clock::now() < deadline) {
      io_.run_one_for(std::chrono::milliseconds(50));
    }
    ASSERT_EQ(out.data.size(), 3 * static_cast<size_t>(i + 1));
    EXPECT_TRUE(transport_->drained());
  }
  EXPECT_EQ(out.waits, 4) << "one wait before each message and one after the last";
  peer_.close();
  ASSERT_TRUE(RunUntilEnded(out));
  EXPECT_EQ(out.end, asio::error::eof);
}

TEST_F(TransportTest, ReadNowReportsWhatIsLeft) {
  ASSERT_TRUE(transport_->RelayReads());
  char buf[4];
  error_code ec;
  EXPECT_EQ(transport_->ReadNow(asio::buffer(buf), ec), 0u);
  EXPECT_EQ(ec, asio::error::would_block);
  asio::write(peer_, asio::buffer(std::string("abcdef")));
  usleep(20'000);
  EXPECT_EQ(transport_->ReadNow(asio::buffer(buf), ec), 4u);
  EXPECT_FALSE(ec);
  EXPECT_FALSE(transport_->drained()) << "two bytes are left";
  EXPECT_EQ(transport_->ReadNow(asio::buffer(buf), ec), 2u);
  EXPECT_TRUE(transport_->drained());
}

TEST_F(TransportTest, AResetThatCameWithTheLastDataShowsOnTheNextWrite) {
  // The one end a drained read does not reveal: a peer that resets (close with unread data, or
  // SO_LINGER 0) right after its last bytes. The relay waits first only when the peer waits for
  // an answer, and writing that answer fails.
  ASSERT_TRUE(transport_->RelayReads());
  asio::write(peer_, asio::buffer(std::string("query")));
  peer_.set_option(asio::socket_base::linger(true, 0));
  peer_.close();  // RST
  usleep(20'000);
  char buf[64];
  error_code ec;
  const size_t n = transport_->ReadNow(asio::buffer(buf), ec);
  if (!ec) {
    EXPECT_EQ(std::string(buf, n), "query");
  } else {
    EXPECT_EQ(ec, asio::error::connection_reset);
  }
  const std::string answer = "answer";
  size_t written = transport_->WriteNow(asio::buffer(answer), ec);
  EXPECT_TRUE(ec) << "wrote " << written << " bytes to a reset connection";
}

}  // namespace
}  // namespace pgrelay::proxy
