#include "proxy/transport.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

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

std::string Transport::PeerEndPointHash() {
  if (!tls_) return {};
  X509* cert = SSL_get1_peer_certificate(tls_->native_handle());
  std::string hash = TlsServerEndPointHash(cert);
  X509_free(cert);
  return hash;
}

}  // namespace pgrelay::proxy
