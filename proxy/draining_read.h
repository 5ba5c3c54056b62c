// A receive buffer whose reads tell Asio's epoll reactor when they drained the socket.
//
// Boost 1.81's reactor tries each read at once ("speculatively") as long as the socket has had a
// readiness event since its last exhausting read, and it counts only EOF as exhausting. On the
// relay every read that returns fewer bytes than it had room for has emptied the kernel's
// queue (TCP copies until the buffer or the queue runs out), so the read that follows would
// return EAGAIN: one wasted system call per read, two per relayed transaction (measured in
// docs/benchmarks.md). A read into a DrainingBuffer reports such a short read as "done and
// exhausted", exactly as the reactor's own EOF case does: the next read waits for epoll without
// trying the socket first. Nothing can be missed: data that arrives after the short read makes
// the kernel signal the socket again (a new edge), and the reactor turns speculation back on
// whenever it sees an edge, whether or not a read was waiting for it. (The one short read that
// leaves data behind is one stopped at TCP urgent data, which PostgreSQL clients and servers
// never send; a peer that does only delays its own session until it sends more.)
//
// This specialises one of Asio's internal templates, so it is compiled only for the Boost
// version it was written and tested against (and the epoll reactor); anywhere else
// DrainingBuffer is an ordinary buffer and reads behave as plain async_read_some.
#pragma once

#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactive_socket_recv_op.hpp>
#include <boost/version.hpp>

namespace pgrelay::proxy {

struct DrainingBuffer {
  using value_type = boost::asio::mutable_buffer;
  using const_iterator = const boost::asio::mutable_buffer*;

  const boost::asio::mutable_buffer* begin() const { return &buffer; }
  const boost::asio::mutable_buffer* end() const { return &buffer + 1; }

  boost::asio::mutable_buffer buffer;
};

}  // namespace pgrelay::proxy

#if BOOST_VERSION == 108100 && defined(BOOST_ASIO_HAS_EPOLL) && \
    !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
#define PGRELAY_DRAINING_READ 1

namespace boost::asio::detail {

// The receive operation's "perform" step for a DrainingBuffer: Asio's own, except that a short
// read on a stream socket is "done and exhausted" (the reactor stops speculating until the next
// readiness event), not only a read of 0 bytes.
template <>
class reactive_socket_recv_op_base<pgrelay::proxy::DrainingBuffer> : public reactor_op {
 public:
  reactive_socket_recv_op_base(const boost::system::error_code& success_ec, socket_type socket,
                               socket_ops::state_type state,
                               const pgrelay::proxy::DrainingBuffer& buffers,
                               socket_base::message_flags flags, func_type complete_func)
      : reactor_op(success_ec, &reactive_socket_recv_op_base::do_perform, complete_func),
        socket_(socket),
        state_(state),
        buffer_(buffers.buffer),
        flags_(flags) {}

  static status do_perform(reactor_op* base) {
    auto* o = static_cast<reactive_socket_recv_op_base*>(base);
    const bool stream = (o->state_ & socket_ops::stream_oriented) != 0;
    if (!socket_ops::non_blocking_recv1(o->socket_, o->buffer_.data(), o->buffer_.size(), o->flags_,
                                        stream, o->ec_, o->bytes_transferred_)) {
      return not_done;  // would block: wait for epoll
    }
    return stream && o->bytes_transferred_ < o->buffer_.size() ? done_and_exhausted : done;
  }

 private:
  socket_type socket_;
  socket_ops::state_type state_;
  boost::asio::mutable_buffer buffer_;
  socket_base::message_flags flags_;
};

}  // namespace boost::asio::detail

#endif
