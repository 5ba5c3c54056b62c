// proxy/draining_read.h: a read after a short read waits for epoll instead of trying the socket
// (no recv that returns EAGAIN), and no data is missed whatever the order of reads, arrivals and
// reactor runs. Own executable: it counts the recv() calls Asio makes by defining recv here (the
// definition forwards to the system call), which must not leak into other tests. Loopback TCP.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <string>

#include "proxy/draining_read.h"

namespace {
std::atomic<int> g_recv_calls{0};
}  // namespace

extern "C" ssize_t recv(int fd, void* buf, size_t len, int flags) {
  g_recv_calls.fetch_add(1, std::memory_order_relaxed);
  return syscall(SYS_recvfrom, fd, buf, len, flags, nullptr, nullptr);
}

namespace pgrelay::proxy {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

struct Read {
  bool done = false;
  error_code ec;
  size_t n = 0;
};

class DrainingReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tcp::acceptor acceptor(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    peer_.connect(acceptor.local_endpoint());
    acceptor.accept(socket_);
  }

  template <typename Buffer>
  void StartRead(Read* r, Buffer buffer) {
    *r = Read{};
    socket_.async_read_some(buffer, [r](error_code ec, size_t n) {
      r->done = true;
      r->ec = ec;
      r->n = n;
    });
  }
  void StartDrainingRead(Read* r) { StartRead(r, DrainingBuffer{asio::buffer(buf_)}); }
  // Runs handlers until the read completed; false after 5 s.
  bool RunUntil(const Read& r) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!r.done && std::chrono::steady_clock::now() < deadline) {
      io_.run_one_for(std::chrono::milliseconds(50));
    }
    return r.done;
  }
  void Send(const std::string& bytes) { asio::write(peer_, asio::buffer(bytes)); }
  std::string Got(const Read& r) const { return std::string(buf_, r.n); }

  asio::io_context io_{1};
  // Keeps poll() running the reactor while no operation is outstanding.
  asio::executor_work_guard<asio::io_context::executor_type> guard_{io_.get_executor()};
  tcp::socket socket_{io_};  // the relay's side
  asio::io_context peer_io_;
  tcp::socket peer_{peer_io_};  // blocking, the other end
  char buf_[4096];
};

#ifdef PGRELAY_DRAINING_READ

TEST_F(DrainingReadTest, ReadAfterShortReadWaitsForEpollWithoutTryingTheSocket) {
  Read r;
  Send("hello");
  StartDrainingRead(&r);
  ASSERT_TRUE(RunUntil(r));
  ASSERT_FALSE(r.ec);
  EXPECT_EQ(Got(r), "hello");

  g_recv_calls = 0;
  StartDrainingRead(&r);
  io_.poll();  // runs the reactor: nothing to read yet
  EXPECT_FALSE(r.done);
  EXPECT_EQ(g_recv_calls.load(), 0) << "the read after a short read tried the socket";

  Send("world");
  ASSERT_TRUE(RunUntil(r));
  ASSERT_FALSE(r.ec);
  EXPECT_EQ(Got(r), "world");
  EXPECT_EQ(g_recv_calls.load(), 1);  // the one recv that epoll's report made worthwhile
}

TEST_F(DrainingReadTest, DataArrivingWhileNoReadIsPendingIsNotMissed) {
  Read r;
  Send("one");
  StartDrainingRead(&r);
  ASSERT_TRUE(RunUntil(r));
  ASSERT_EQ(Got(r), "one");

  // The data arrives and the reactor consumes its readiness event while no read is pending
  // (as when the relay is busy elsewhere): the next read must still see it.
  Send("two");
  usleep(20'000);
  io_.poll();
  io_.poll();
  StartDrainingRead(&r);
  ASSERT_TRUE(RunUntil(r)) << "data that arrived between reads was missed";
  EXPECT_EQ(Got(r), "two");
}

TEST_F(DrainingReadTest, DataArrivingBeforeTheReactorRunsIsNotMissed) {
  Read r;
  Send("one");
  StartDrainingRead(&r);
  ASSERT_TRUE(RunUntil(r));
  ASSERT_EQ(Got(r), "one");

  // The data arrives after the short read, before the next read starts and before the reactor
  // has run again: the read is queued without trying the socket, and epoll reports the data.
  Send("three");
  usleep(20'000);
  g_recv_calls = 0;
  StartDrainingRead(&r);
  ASSERT_TRUE(RunUntil(r)) << "data that arrived before the reactor ran was missed";
  EXPECT_EQ(Got(r), "three");
  EXPECT_EQ(g_recv_calls.load(), 1);
}

TEST_F(DrainingReadTest, FullBufferKeepsReadingAtOnce) {
  // A read that filled its buffer did not drain the socket: the next one reads straight away.
  const std::string big(6000, 'x');
  Send(big);
  usleep(20'000);
  Read r;
  StartDrainingRead(&r);
  ASSERT_TRUE(RunUntil(r));
  ASSERT_EQ(r.n, sizeof(buf_));
  StartDrainingRead(&r);
  io_.poll();
  ASSERT_TRUE(r.done) << "the rest of a full read waited for epoll";
  EXPECT_EQ(r.n, big.size() - sizeof(buf_));
}

TEST_F(DrainingReadTest, EndOfStreamAfterShortReadIsReported) {
  Read r;
  Send("last");
  StartDrainingRead(&r);
  ASSERT_TRUE(RunUntil(r));
  StartDrainingRead(&r);
  peer_.shutdown(tcp::socket::shutdown_send);
  ASSERT_TRUE(RunUntil(r));
  EXPECT_EQ(r.ec, asio::error::eof);
}

#endif  // PGRELAY_DRAINING_READ

// What DrainingBuffer saves (and proof that the counting works): a plain buffer's read after a
// short read tries the socket first and gets EAGAIN.
TEST_F(DrainingReadTest, PlainAsioReadTriesTheSocketAgain) {
  Read r;
  Send("hello");
  StartRead(&r, asio::buffer(buf_));
  ASSERT_TRUE(RunUntil(r));
  g_recv_calls = 0;
  StartRead(&r, asio::buffer(buf_));
  io_.poll();
  EXPECT_FALSE(r.done);
  EXPECT_EQ(g_recv_calls.load(), 1);
  Send("world");
  ASSERT_TRUE(RunUntil(r));
  EXPECT_EQ(Got(r), "world");
}

}  // namespace
}  // namespace pgrelay::proxy
