// The relay's reads on plain TCP, without the read that only returns EAGAIN.
//
// Asio's async_read_some tries the socket before it waits for readiness, and its epoll reactor
// stops trying only after a read that returned nothing (EOF). So after every read that emptied
// the socket, the next one is a recv that returns EAGAIN: one wasted system call per read, two
// per relayed statement, a third of the proxy's system calls (docs/benchmarks.md). Asking for a
// wait instead (async_wait) costs an epoll_ctl per wait, the same.
//
// A read into a RelayReadBuffer is one recvmsg with TCP_INQ: the kernel also reports how many
// bytes the read left, and counts a received FIN as one (Linux's tcp_inq_hint). When nothing is
// left and the bytes read complete messages after which the peer waits for pgrelay (a client's
// Query or Sync; a server's ReadyForQuery for every reply it owes), the read tells the reactor
// the socket is exhausted, and the next read waits for readiness without trying the socket
// first. Readiness the reactor saw meanwhile still counts: Asio notes any event that
// finds no read waiting and then tries at once, as before.
//
// Why both conditions:
//   - Edge-triggered epoll reports a FIN that arrived together with the last data only once.
//     A short read is therefore not proof of an empty socket; TCP_INQ's count is (the reverted
//     2026-11-27 03:31 experiment hung here; tests/proxy/transport_test.cc holds the cases).
//   - A reset that arrived with the data is not in TCP_INQ's count. A client that waits for an
//     answer gets one, and writing it fails and ends the session. A server that owes nothing
//     more gets the next query, and that write fails and closes the connection
//     (ClientSession::BackendWriteFailed). After anything else (a partial message, a Parse
//     without Sync, a server that still owes replies) the next read is tried at once, as
//     before, and sees the reset.
//
// This specialises Asio's receive operation for one buffer type (below). It depends on Boost
// 1.81's reactor; another version fails the static_assert and needs this file checked again.
#pragma once

#include <boost/version.hpp>
#include <cstddef>

// Declares reactive_socket_recv_op_base (through basic_socket), specialised below before any
// read into a RelayReadBuffer is instantiated.
#include "proxy/asio_common.h"

static_assert(BOOST_VERSION == 108100,
              "proxy/relay_read.h specialises Boost 1.81's reactive_socket_recv_op_base: check "
              "it against this Boost version");

namespace pgrelay::proxy {

enum class RelayPeer : char { kClient, kServer };

// The space to read into, plus what the read needs to judge the bytes it gets.
struct RelayReadBuffer : asio::mutable_buffer {
  using OwedFn = size_t (*)(const void* context);
  RelayReadBuffer(asio::mutable_buffer space, const char* message_start, RelayPeer peer,
                  OwedFn owed = nullptr, const void* owed_context = nullptr)
      : asio::mutable_buffer(space),
        message_start(message_start),
        peer(peer),
        owed(owed),
        owed_context(owed_context) {}
  // The first unread byte of the stream in the same buffer, right before `space`, at a message
  // boundary; nullptr when the stream is inside a message (a streamed DataRow or CopyData).
  const char* message_start;
  RelayPeer peer;
  // A server: how many ReadyForQuery it owes when the read completes (asked then, not when the
  // read is started: the session may send more meanwhile).
  OwedFn owed;
  const void* owed_context;
};

// Whether [message_start, data() + n) is whole messages and the last one leaves the peer
// waiting for an answer.
bool PeerAwaitsAnswer(const RelayReadBuffer& buffer, size_t n);

enum class RelayReadStatus { kNotDone, kDone, kExhausted };

// One recvmsg on `fd` (non-blocking) into `buffer`; kExhausted as described above.
RelayReadStatus PerformRelayRead(int fd, const RelayReadBuffer& buffer, error_code& ec,
                                 size_t& bytes);

// Turns TCP_INQ on for a socket; false if the kernel has no TCP_INQ (before 4.18): the reads
// then work as Asio's always do.
bool EnableInq(int fd);

}  // namespace pgrelay::proxy

namespace boost::asio::detail {

// Asio's receive operation for a RelayReadBuffer: the same object layout and completion as for
// any buffer, with PerformRelayRead as its perform step. Only async_read_some on a connected
// TCP socket uses it: it ignores the message flags (always 0 there) and the socket state, and
// does not report to Asio's handler tracking.
template <>
class reactive_socket_recv_op_base<pgrelay::proxy::RelayReadBuffer> : public reactor_op {
 public:
  reactive_socket_recv_op_base(const boost::system::error_code& success_ec, socket_type socket,
                               socket_ops::state_type /*state*/,
                               const pgrelay::proxy::RelayReadBuffer& buffer,
                               socket_base::message_flags /*flags*/, func_type complete_func)
      : reactor_op(success_ec, &reactive_socket_recv_op_base::do_perform, complete_func),
        socket_(socket),
        buffer_(buffer) {}

  static status do_perform(reactor_op* base) {
    auto* o = static_cast<reactive_socket_recv_op_base*>(base);
    switch (
        pgrelay::proxy::PerformRelayRead(o->socket_, o->buffer_, o->ec_, o->bytes_transferred_)) {
      case pgrelay::proxy::RelayReadStatus::kNotDone:
        return not_done;
      case pgrelay::proxy::RelayReadStatus::kDone:
        return done;
      case pgrelay::proxy::RelayReadStatus::kExhausted:
        break;
    }
    return done_and_exhausted;
  }

 private:
  socket_type socket_;
  pgrelay::proxy::RelayReadBuffer buffer_;
};

}  // namespace boost::asio::detail
