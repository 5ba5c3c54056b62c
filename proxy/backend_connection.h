// One server connection from pgrelay to a PostgreSQL node: connect, log in with the configured
// credentials (SCRAM-SHA-256, md5, password or trust) and then hand its socket to the relay.
// Owned by one client session on one worker; not thread-safe.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/asio_common.h"
#include "proxy/buffer_pool.h"
#include "proxy/server_tls.h"
#include "proxy/transport.h"

namespace pgrelay::proxy {

struct BackendLoginParams {
  std::string node_name;
  std::string host;
  uint16_t port = 0;
  std::string user;
  std::string password;
  std::string database;
  std::vector<std::pair<std::string, std::string>> options;  // other startup parameters
  std::chrono::milliseconds timeout{5000};
  std::shared_ptr<const BackendTls> tls;  // backend.tls; nullptr = disable
};

class BackendConnection {
 public:
  BackendConnection(const asio::any_io_executor& executor, BufferPool* pool);

  // Connects and logs in. On failure returns false; then either server_error holds the node's
  // own ErrorResponse message (to relay to the client as is) or error_message says what failed.
  awaitable<bool> Login(const BackendLoginParams& params);

  tcp::socket& socket() { return transport_.socket(); }
  Transport& transport() { return transport_; }
  IoBuffer& buffer() { return buffer_; }
  const std::string& node_name() const { return node_name_; }
  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }
  int32_t pid() const { return pid_; }
  int32_t key() const { return key_; }
  // ParameterStatus and NoticeResponse messages received during login, raw, in order; with
  // NoteParameterStatus, each parameter's latest value.
  const std::string& startup_messages() const { return startup_messages_; }
  // A ParameterStatus message (whole, raw) the server sent after login: replaces the one with
  // the same name in startup_messages() (or is added), so a session that takes this connection
  // from the pool is told the server's current values.
  void NoteParameterStatus(std::string_view message);
  const std::string& server_error() const { return server_error_; }
  const std::string& error_message() const { return error_message_; }

 private:
  awaitable<bool> LoginSteps(const BackendLoginParams& params);
  // SSLRequest and, if the node agrees, the TLS handshake; false (with error_message_) if
  // backend.tls cannot be met.
  awaitable<bool> StartTls(const BackendLoginParams& params, const std::string& where);
  bool Fail(std::string message) {
    error_message_ = std::move(message);
    return false;
  }

  Transport transport_;
  IoBuffer buffer_;
  std::string node_name_;
  std::string host_;
  uint16_t port_ = 0;
  int32_t pid_ = 0;
  int32_t key_ = 0;
  std::string startup_messages_;
  std::string server_error_;
  std::string error_message_;
};

}  // namespace pgrelay::proxy
