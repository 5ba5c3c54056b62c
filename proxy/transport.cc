#include "proxy/transport.h"

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

}  // namespace pgrelay::proxy
