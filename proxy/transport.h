// One connection's byte stream: a TCP socket, upgraded in place to TLS when the client asks
// for it (SSLRequest) and pgrelay offers it. Start-up, login and the relay read and write
// through it without caring which; the plain path costs one branch per operation. Owned by one
// session; not thread-safe.
#pragma once

#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <memory>
#include <string>
#include <tuple>

#include "proxy/asio_common.h"
#include "proxy/relay_read.h"
#include "proxy/server_tls.h"

namespace pgrelay::proxy {

class Transport {
 public:
  explicit Transport(tcp::socket socket) : socket_(std::move(socket)) {}

  asio::any_io_executor get_executor() { return socket_.get_executor(); }
  // The TCP socket, under TLS or not (options, addresses, close).
  tcp::socket& socket() { return tls_ ? tls_->next_layer() : socket_; }
  bool tls() const { return tls_ != nullptr; }
  // The TLS settings the handshake used (channel binding data); nullptr without TLS.
  const ServerTls* server_tls() const { return server_tls_.get(); }

  // The server side of the TLS handshake; the error if it failed (then close the connection).
  awaitable<error_code> Handshake(std::shared_ptr<const ServerTls> server_tls);
  // The client side, toward a node at `host` (pgrelay has sent SSLRequest and read 'S'). With
  // backend.tls verify-full the certificate must name `host`. On failure *detail says why the
  // certificate was refused, if it was.
  awaitable<error_code> ClientHandshake(std::shared_ptr<const BackendTls> backend_tls,
                                        const std::string& host, std::string* detail);

  awaitable<std::tuple<error_code, size_t>> ReadSome(asio::mutable_buffer buffer) {
    return tls_ ? tls_->async_read_some(buffer, kNoThrow)
                : socket_.async_read_some(buffer, kNoThrow);
  }
  template <typename ConstBufferSequence>
  awaitable<std::tuple<error_code, size_t>> Write(const ConstBufferSequence& buffers) {
    return tls_ ? asio::async_write(*tls_, buffers, kNoThrow)
                : asio::async_write(socket_, buffers, kNoThrow);
  }
  // The relay's reads: as ReadSome, but on plain TCP without the read that only returns
  // EAGAIN after one that emptied the socket at a point where the peer waits for an answer
  // (proxy/relay_read.h). `message_start`: the first unread byte before `buffer`, at a message
  // boundary, or nullptr inside a message.
  awaitable<std::tuple<error_code, size_t>> RelayRead(asio::mutable_buffer buffer,
                                                      const char* message_start, RelayPeer peer,
                                                      RelayReadBuffer::OwedFn owed = nullptr,
                                                      const void* owed_context = nullptr) {
    if (tls_) return tls_->async_read_some(buffer, kNoThrow);
    if (!inq_asked_) {
      inq_asked_ = true;
      EnableInq(socket_.native_handle());  // without it the reads work as Asio's always do
    }
    return socket_.async_read_some(RelayReadBuffer(buffer, message_start, peer, owed, owed_context),
                                   kNoThrow);
  }
  // Writes what the socket takes at once, without waiting: the bytes written (0 if it would
  // block). Plain TCP only: under TLS it writes nothing (use Write). Relaying a reply or a query
  // this way needs no coroutine frame, no reactor operation and no allocation.
  template <typename ConstBufferSequence>
  size_t WriteNow(const ConstBufferSequence& buffers, error_code& ec) {
    ec.clear();
    if (tls_) return 0;
    if (!non_blocking_) {
      socket_.non_blocking(true, ec);
      if (ec) return 0;
      non_blocking_ = true;
    }
    const size_t n = socket_.write_some(buffers, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) ec.clear();
    return n;
  }
  // After ClientHandshake: the node certificate's tls-server-end-point hash (channel binding).
  std::string PeerEndPointHash();
  void Close() {
    error_code ignored;
    socket().close(ignored);
  }

 private:
  tcp::socket socket_;  // moved into tls_ by Handshake
  std::shared_ptr<const ServerTls> server_tls_;
  std::shared_ptr<const BackendTls> backend_tls_;  // keeps the client context alive
  std::unique_ptr<asio::ssl::stream<tcp::socket>> tls_;
  bool non_blocking_ = false;  // the socket is in non-blocking mode for WriteNow
  bool inq_asked_ = false;     // TCP_INQ requested for the relay's reads
};

}  // namespace pgrelay::proxy
