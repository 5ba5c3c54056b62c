// One client connection: start-up, authentication, then relaying its traffic to the backend
// connection(s) it owns. Lives in one coroutine on one worker; not thread-safe.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "proxy/asio_common.h"
#include "proxy/backend_connection.h"
#include "proxy/buffer_pool.h"
#include "proxy/protocol/frame_scanner.h"
#include "proxy/server_context.h"
#include "proxy/wire_stream.h"

namespace pgrelay::proxy {

class ClientSession {
 public:
  ClientSession(tcp::socket socket, ServerContext& context, BufferPool& pool);
  ~ClientSession();

  awaitable<void> Run();
  // Ends the session from outside (process shutdown): closes its sockets, so Run() returns.
  void Shutdown() { CloseAll(); }

  // How one relay direction ended.
  enum class PumpEnd { kSourceClosed, kSinkClosed, kTerminate, kBadLength, kTooLarge, kIdle };

 private:
  awaitable<bool> Startup();
  awaitable<bool> StartupSteps();
  awaitable<bool> Authenticate();
  awaitable<bool> AuthenticateScram(const AuthDirectory::User* user);
  awaitable<bool> AuthenticateMd5(const AuthDirectory::User* user);
  awaitable<bool> ConnectPrimary();
  awaitable<void> Relay();
  awaitable<PumpEnd> ClientToBackend();
  awaitable<PumpEnd> BackendToClient();
  awaitable<void> HandleCancel(int32_t pid, int32_t key);
  awaitable<void> SendFatal(std::string_view code, std::string_view message,
                            std::string_view hint = {});
  awaitable<void> SendError(std::string_view severity, std::string_view code,
                            std::string_view message, std::string_view hint = {});
  void CloseAll();

  ServerContext& ctx_;
  const config::Config& config_;
  BufferPool& pool_;
  tcp::socket client_;
  IoBuffer client_buf_;
  WireStream client_stream_;
  std::string peer_;
  std::string user_;
  std::string database_;
  std::vector<std::pair<std::string, std::string>> forwarded_params_;
  const AuthDirectory::User* auth_user_ = nullptr;
  bool counted_ = false;
  int32_t pid_ = 0;
  int32_t key_ = 0;
  // The session's server connections; one (the primary) until routing uses several nodes.
  std::unique_ptr<BackendConnection> backend_;
  char tx_status_ = 'I';
  bool backend_sent_fatal_ = false;
  std::string scratch_;
  std::vector<asio::const_buffer> to_backend_;
  std::vector<asio::const_buffer> to_client_;
};

}  // namespace pgrelay::proxy
