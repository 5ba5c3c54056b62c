#include "proxy/transport.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace pgrelay::proxy {

awaitable<error_code> Transport::Handshake(std::shared_ptr<const ServerTls> server_tls) {
  server_tls_ = std::move(server_tls);
  // asio::ssl::stream needs a non-const context; it only reads it (the SSL object copies what
  // it needs), and the context outlives the stream through server_tls_.
  auto& context = const_cast<asio::ssl::context&>(server_tls_->context);
  tls_ = std::make_unique<asio::ssl::stream<tcp::socket>>(std::move(socket_), context);
  auto [ec] = co_await tls_->async_handshake(asio::ssl::stream_base::server, kNoThrow);
  co_return ec;
}

awaitable<error_code> Transport::ClientHandshake(std::shared_ptr<const BackendTls> backend_tls,
                                                 const std::string& host, std::string* detail) {
  backend_tls_ = std::move(backend_tls);
  auto& context = const_cast<asio::ssl::context&>(backend_tls_->context);
  tls_ = std::make_unique<asio::ssl::stream<tcp::socket>>(std::move(socket_), context);
  SSL* ssl = tls_->native_handle();
  error_code address_ec;
  asio::ip::make_address(host, address_ec);
  const bool literal = !address_ec;                           // an IP address, not a name
  if (!literal) SSL_set_tlsext_host_name(ssl, host.c_str());  // SNI takes names only
  if (backend_tls_->mode == config::BackendTlsMode::kVerifyFull) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (literal) {
      X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
    } else {
      X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
    }
  }
  auto [ec] = co_await tls_->async_handshake(asio::ssl::stream_base::client, kNoThrow);
  if (ec) {
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) *detail = X509_verify_cert_error_string(verify);
  }
  co_return ec;
}

bool Transport::RelayReads() {
  if (tls_) return false;
  if (inq_ == Inq::kUnknown) {
    // Without TCP_INQ (kernels before 4.18) every read is tried at once, as Asio does.
    const int on = 1;
    inq_ = ::setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_INQ, &on, sizeof on) == 0
               ? Inq::kOn
               : Inq::kOff;
  }
  return true;
}

size_t Transport::ReadNow(asio::mutable_buffer buffer, error_code& ec) {
  drained_ = false;
  ec.clear();
  if (buffer.size() == 0) return 0;
  if (!NonBlocking(ec)) return 0;
  iovec iov{buffer.data(), buffer.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (inq_ == Inq::kOn) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
  }
  for (;;) {
    const ssize_t n = ::recvmsg(socket_.native_handle(), &msg, 0);
    if (n > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == IPPROTO_TCP && c->cmsg_type == TCP_CM_INQ) {
          int left = 0;
          std::memcpy(&left, CMSG_DATA(c), sizeof left);
          drained_ = left == 0;
        }
      }
      return static_cast<size_t>(n);
    }
    if (n == 0) {
      ec = asio::error::eof;
      return 0;
    }
    if (errno == EINTR) continue;
    ec = error_code(errno, asio::error::get_system_category());
    return 0;
  }
}

std::string Transport::PeerEndPointHash() {
  if (!tls_) return {};
  X509* cert = SSL_get1_peer_certificate(tls_->native_handle());
  std::string hash = TlsServerEndPointHash(cert);
  X509_free(cert);
  return hash;
}

}  // namespace pgrelay::proxy
