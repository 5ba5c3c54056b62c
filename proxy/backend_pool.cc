#include "proxy/backend_pool.h"

#include <sys/socket.h>

#include <cerrno>

#include "config/config.h"

namespace pgrelay::proxy {

namespace {

// Still open, and silent since it was parked: a server that ended the connection (shutdown,
// pg_terminate_backend, idle_session_timeout) has sent an ErrorResponse or closed it.
bool Quiet(BackendConnection& conn) {
  if (!conn.socket().is_open()) return false;
  char byte = 0;
  const ssize_t n = ::recv(conn.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

awaitable<void> Goodbye(std::unique_ptr<BackendConnection> conn) {
  static constexpr char kTerminate[] = {'X', 0, 0, 0, 4};
  if (conn->socket().is_open()) {
    co_await conn->transport().Write(asio::const_buffer(kTerminate, sizeof kTerminate));
  }
  conn->transport().Close();
}

}  // namespace

BackendPool::BackendPool() : nodes_(config::kMaxNodes) {}

BackendPool::~BackendPool() = default;

std::string BackendPool::KeyOf(const BackendLoginParams& p) {
  std::string key;
  auto add = [&key](std::string_view part) {
    key.append(part);
    key.push_back('\0');
  };
  add(p.host);
  add(std::to_string(p.port));
  add(p.user);
  add(p.database);
  for (const auto& [name, value] : p.options) {
    add(name);
    add(value);
  }
  // Connections made under other backend TLS settings (another mode or other files) no longer
  // match and age out; a reload that keeps them keeps the pool.
  if (p.tls == nullptr) {
    add("disable");
  } else {
    add(p.tls->identity);
  }
  return key;
}

std::unique_ptr<BackendConnection> BackendPool::Take(int node, std::string_view key) {
  if (node < 0 || static_cast<size_t>(node) >= nodes_.size()) return nullptr;
  std::vector<Entry>& parked = nodes_[node];
  // Newest first: it is the likeliest to be alive, and the oldest then age out.
  for (size_t i = parked.size(); i-- > 0;) {
    if (parked[i].key != key) continue;
    std::unique_ptr<BackendConnection> conn = std::move(parked[i].conn);
    parked.erase(parked.begin() + static_cast<std::ptrdiff_t>(i));
    CountIdle(node, -1);
    if (Quiet(*conn)) {
      if (shard_ != nullptr) shard_->Inc(families_->pool_reused.At(static_cast<size_t>(node)));
      return conn;
    }
    Close(std::move(conn));
  }
  return nullptr;
}

bool BackendPool::Park(int node, std::string key, std::unique_ptr<BackendConnection> conn,
                       size_t max_idle) {
  if (shut_ || node < 0 || static_cast<size_t>(node) >= nodes_.size()) {
    Close(std::move(conn));
    return false;
  }
  std::vector<Entry>& parked = nodes_[node];
  if (parked.size() >= max_idle) {
    Close(std::move(conn));
    return false;
  }
  conn->buffer().ShrinkIfIdle();  // its read buffer goes back to the worker's pool meanwhile
  parked.push_back(Entry{std::move(key), std::move(conn), Clock::now()});
  CountIdle(node, 1);
  return true;
}

void BackendPool::Sweep(Clock::time_point now, std::chrono::milliseconds idle_timeout,
                        const std::vector<bool>& lost, size_t max_idle) {
  for (size_t node = 0; node < nodes_.size(); ++node) {
    std::vector<Entry>& parked = nodes_[node];
    if (parked.empty()) continue;
    const bool drop_all = node < lost.size() && lost[node];
    // Oldest first: the first `excess` go if there are more than max_idle.
    const size_t excess = parked.size() > max_idle ? parked.size() - max_idle : 0;
    size_t kept = 0;
    for (size_t i = 0; i < parked.size(); ++i) {
      if (drop_all || i < excess || now - parked[i].parked >= idle_timeout) {
        Close(std::move(parked[i].conn));
        CountIdle(static_cast<int>(node), -1);
        continue;
      }
      if (kept != i) parked[kept] = std::move(parked[i]);
      ++kept;
    }
    parked.resize(kept);
  }
}

void BackendPool::Shut() {
  shut_ = true;
  Sweep(Clock::now(), std::chrono::milliseconds(0), {});
}

size_t BackendPool::Idle(int node) const {
  if (node < 0 || static_cast<size_t>(node) >= nodes_.size()) return 0;
  return nodes_[node].size();
}

size_t BackendPool::Idle() const {
  size_t n = 0;
  for (const auto& parked : nodes_) n += parked.size();
  return n;
}

void BackendPool::Close(std::unique_ptr<BackendConnection> conn) {
  const asio::any_io_executor executor = conn->transport().get_executor();
  asio::co_spawn(executor, Goodbye(std::move(conn)), asio::detached);
}

void BackendPool::CountIdle(int node, int delta) {
  if (shard_ == nullptr) return;
  shard_->Add(families_->pool_idle_connections.At(static_cast<size_t>(node)), delta);
}

}  // namespace pgrelay::proxy
