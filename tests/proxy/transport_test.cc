// Transport::ReadSome on plain TCP (loopback sockets inside the process): a peer that sends its
// last bytes and closes at once (a server's FATAL before it exits, a client that writes and
// quits) is seen to close right after its data, however the data and the FIN arrive. A relay
// read that skipped the read after a short one waits forever in the second and third cases
// with edge-triggered epoll (checked against the reverted "draining reads", docs/benchmarks.md):
// any cheaper read path must keep these passing.
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

}  // namespace
}  // namespace pgrelay::proxy
