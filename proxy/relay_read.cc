#include "proxy/relay_read.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "proxy/protocol/messages.h"

namespace pgrelay::proxy {

namespace {

// The tail of the read can end a message after which the peer waits; only then is the whole
// read walked. Sync is 5 bytes; a Query ends with a NUL; ReadyForQuery is 6 bytes. (Flush,
// CopyDone and CopyFail do not count: the server may answer them with nothing.)
bool TailMayAwait(const char* begin, const char* end, RelayPeer peer) {
  const size_t len = static_cast<size_t>(end - begin);
  if (peer == RelayPeer::kServer) {
    return len >= 6 && end[-6] == 'Z' && protocol::ReadBe32(end - 5) == 5;
  }
  if (len >= 5 && end[-5] == 'S' && protocol::ReadBe32(end - 4) == 4) return true;
  return len >= 6 && end[-1] == '\0';
}

}  // namespace

bool PeerAwaitsAnswer(const RelayReadBuffer& buffer, size_t n) {
  if (buffer.message_start == nullptr) return false;
  const char* begin = buffer.message_start;
  const char* end = static_cast<const char*>(buffer.data()) + n;
  if (!TailMayAwait(begin, end, buffer.peer)) return false;
  char last = 0;
  size_t ready = 0;  // ReadyForQuery messages
  for (const char* p = begin; p != end;) {
    if (end - p < 5) return false;
    const uint64_t length = protocol::ReadBe32(p + 1);
    if (length < 4 || length + 1 > static_cast<uint64_t>(end - p)) return false;
    last = *p;
    if (last == 'Z') ++ready;
    p += length + 1;
  }
  if (buffer.peer == RelayPeer::kClient) return last == 'Q' || last == 'S';
  // A server that still owes replies after these is not waiting for pgrelay (a pipelined
  // query it had not read when it failed would go unnoticed).
  return last == 'Z' && (buffer.owed == nullptr || ready >= buffer.owed(buffer.owed_context));
}

RelayReadStatus PerformRelayRead(int fd, const RelayReadBuffer& buffer, error_code& ec,
                                 size_t& bytes) {
  iovec iov{buffer.data(), buffer.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  for (;;) {
    const ssize_t n = ::recvmsg(fd, &msg, 0);
    if (n > 0) {
      ec = error_code();
      bytes = static_cast<size_t>(n);
      int left = -1;  // stays -1 without TCP_INQ
      if ((msg.msg_flags & MSG_CTRUNC) == 0) {
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
          if (c->cmsg_level == IPPROTO_TCP && c->cmsg_type == TCP_CM_INQ &&
              c->cmsg_len >= CMSG_LEN(sizeof left)) {
            std::memcpy(&left, CMSG_DATA(c), sizeof left);
          }
        }
      }
      return left == 0 && PeerAwaitsAnswer(buffer, bytes) ? RelayReadStatus::kExhausted
                                                          : RelayReadStatus::kDone;
    }
    bytes = 0;
    if (n == 0) {
      // The buffer is never empty here (Asio completes empty reads without the reactor).
      ec = asio::error::eof;
      return RelayReadStatus::kExhausted;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return RelayReadStatus::kNotDone;
    ec = error_code(errno, asio::error::get_system_category());
    return RelayReadStatus::kExhausted;
  }
}

bool EnableInq(int fd) {
  const int on = 1;
  return ::setsockopt(fd, IPPROTO_TCP, TCP_INQ, &on, sizeof on) == 0;
}

}  // namespace pgrelay::proxy
