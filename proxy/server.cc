#include "proxy/server.h"

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include "config/log.h"
#include "proxy/asio_common.h"
#include "proxy/auth_directory.h"
#include "proxy/buffer_pool.h"
#include "proxy/cancel_registry.h"
#include "proxy/client_session.h"
#include "proxy/server_context.h"
#include "proxy/worker_context.h"

namespace pgrelay::proxy {

namespace {

constexpr auto kShutdownGrace = std::chrono::seconds(5);

// One thread running one io_context; every session on it stays on it. `sessions` and
// `shutting_down` are touched only on this worker's thread.
struct Worker {
  explicit Worker(std::shared_ptr<const config::Config> config) : context(std::move(config)) {}
  WorkerContext context;  // declared first: sessions return buffers to it while io is destroyed
  // One thread runs it, and every socket of its sessions is used only from that thread (other
  // threads post to it): Asio need not lock per socket operation (UNSAFE_IO keeps the locks of
  // the scheduler and of descriptor registration, which the listener's thread uses).
  asio::io_context io{BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO};
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  std::unordered_set<ClientSession*> sessions;
  asio::steady_timer grace{io};
  asio::steady_timer watch{io};  // WatchTopology's
  bool shutting_down = false;
  std::thread thread;

  // Ends every session (closing its sockets ends its coroutine); run() returns once they are
  // gone, or after the grace period at the latest.
  void BeginShutdown() {
    shutting_down = true;
    guard.reset();
    watch.cancel();
    context.backends.Shut();
    for (ClientSession* s : sessions) s->Shutdown();
    if (sessions.empty()) return;
    grace.expires_after(kShutdownGrace);
    grace.async_wait([this](error_code ec) {
      if (!ec) io.stop();
    });
  }
};

// Closes this worker's parked connections (pool.mode: session) that idled longer than
// pool.idle_timeout, whose node is lost, or beyond pool.max_idle per node (a reload may lower
// it); all of them once a reload set pool.mode off.
void SweepPool(WorkerContext& context, const std::vector<bool>& lost) {
  if (context.backends.Idle() == 0) return;
  const config::PoolConfig& pool = context.config->pool;
  const auto idle_timeout =
      pool.mode == config::PoolMode::kOff ? std::chrono::milliseconds(0) : pool.idle_timeout;
  context.backends.Sweep(std::chrono::steady_clock::now(), idle_timeout, lost,
                         static_cast<size_t>(pool.max_idle));
}

// Drops this worker's backend connections to nodes the monitor has just declared down or
// fenced: a statement waiting on a hung node gets an error instead of waiting forever, and no
// session keeps talking to a stale primary. Also sweeps the pool (SweepPool).
awaitable<void> WatchTopology(ServerContext* context, Worker* worker) {
  uint64_t seen = 0;
  std::vector<bool> was_lost;  // per node slot, as of the last snapshot seen
  while (!worker->shutting_down) {
    const auto period =
        std::max(std::chrono::milliseconds(50), worker->context.config->health.interval / 4);
    worker->watch.expires_after(period);
    co_await worker->watch.async_wait(kNoThrow);
    if (worker->shutting_down) break;
    const auto topology = context->monitor->Snapshot();
    if (topology->version != seen) {
      seen = topology->version;
      was_lost.resize(topology->nodes.size(), false);
      for (size_t i = 0; i < topology->nodes.size(); ++i) {
        const health::NodeHealth state = topology->nodes[i].state;
        const bool lost = topology->nodes[i].Lost();
        const bool before = was_lost[i];
        was_lost[i] = lost;
        if (!lost || before) continue;
        const char* why = topology->nodes[i].removed ? "was removed from the configuration"
                          : state == health::NodeHealth::kDown
                              ? "was declared down by the health checks"
                              : "is fenced (it is not the primary of the current epoch)";
        for (ClientSession* s : worker->sessions) s->DropNode(static_cast<int>(i), why);
      }
    }
    SweepPool(worker->context, was_lost);
  }
}

// A worker thread's body (a named function: tests/bench/callgrind_relay.sh counts the
// instructions executed under it).
void RunWorker(Worker* worker, size_t index) {
  const std::string name = "pgrelay-w" + std::to_string(index);
  NameThisThread(name.c_str());
  worker->io.run();
}

awaitable<void> RunSession(tcp::socket socket, ServerContext* context, Worker* worker) {
  // Pick up a newer function catalog (a pointer compare; the load is rare).
  auto catalog = context->catalog->Catalog();
  if (catalog != worker->context.classifier.catalog()) {
    worker->context.classifier.SetCatalog(std::move(catalog));
  }
  admin::Shard& m = *worker->context.metrics;
  const admin::ProxyMetrics& pm = *context->metrics;
  m.Inc(pm.client_connections_total.At());
  m.Add(pm.client_connections.At(), 1);
  ClientSession session(std::move(socket), *context, worker->context);
  worker->sessions.insert(&session);
  if (worker->shutting_down) session.Shutdown();
  co_await session.Run();
  m.Add(pm.client_connections.At(), -1);
  worker->sessions.erase(&session);
  if (worker->shutting_down && worker->sessions.empty()) worker->grace.cancel();
}

}  // namespace

struct Server::Impl {
  std::shared_ptr<const config::Config> config;
  health::Monitor* monitor;
  CancelRegistry cancels;
  AuthThrottle auth_throttle;
  ServerContext context;
  asio::io_context main_io{1};
  std::vector<std::unique_ptr<Worker>> workers;
  std::function<void()> on_sighup;
  std::mutex workers_mu;  // guards `running` against Reconfigure from another thread
  bool running = false;   // workers exist and run their io_context

  void Stopped() {
    std::lock_guard lock(workers_mu);
    running = false;
  }

  Impl(std::shared_ptr<const config::Config> c, health::Monitor* m, health::CatalogRefresher* f,
       health::LsnTracker* lsn, admin::ProxyMetrics* pm)
      : config(std::move(c)), monitor(m) {
    context.metrics = pm;
    context.lsn = lsn;
    context.monitor = monitor;
    context.catalog = f;
    context.auth.store(std::make_shared<const AuthDirectory>(*config));
    context.cancels = &cancels;
    context.auth_throttle = &auth_throttle;
  }

  awaitable<void> Accept(tcp::acceptor& acceptor) {
    size_t next = 0;
    for (;;) {
      Worker& w = *workers[next];
      next = (next + 1) % workers.size();
      auto [ec, socket] = co_await acceptor.async_accept(w.io, kNoThrow);
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
      if (ec) {
        PGRELAY_LOG(kWarning, "listener", "accept failed: " << ec.message());
        if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
          // Out of file descriptors: back off briefly instead of spinning.
          asio::steady_timer t(acceptor.get_executor(), std::chrono::milliseconds(50));
          co_await t.async_wait(kNoThrow);
        }
        continue;
      }
      asio::co_spawn(w.io, RunSession(std::move(socket), &context, &w), asio::detached);
    }
  }
};

Server::Server(std::shared_ptr<const config::Config> config, health::Monitor* monitor,
               health::CatalogRefresher* catalog, health::LsnTracker* lsn,
               admin::ProxyMetrics* metrics, const PauseGate* pause)
    : impl_(std::make_unique<Impl>(std::move(config), monitor, catalog, lsn, metrics)) {
  impl_->context.pause = pause;
}

bool Server::EveryNodeOnThisMachine(const config::Config& config) {
  bool any = false;
  for (const config::NodeConfig& node : config.nodes) {
    if (node.removed) continue;
    any = true;
    if (node.host == "localhost") continue;
    error_code ec;
    const asio::ip::address address = asio::ip::make_address(node.host, ec);
    if (ec || !address.is_loopback()) return false;
  }
  return any;
}

int Server::WorkerCount(const config::Config& config, const char** rule) {
  const char* ignored = nullptr;
  if (rule == nullptr) rule = &ignored;
  *rule = "as configured";
  if (config.workers > 0) return config.workers;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // With every node on this machine pgrelay shares the cores with PostgreSQL (and often the
  // clients): a worker per core then adds wake-ups and context switches without adding
  // throughput, since the relay's cost is mostly the kernel's (docs/benchmarks.md).
  if (EveryNodeOnThisMachine(config)) {
    *rule = "workers: 0 = half the cores when every node is on this machine";
    return std::max(1, cores / 2);
  }
  *rule = "workers: 0 = one per core";
  return cores;
}

Server::~Server() = default;

void Server::OnSighup(std::function<void()> handler) { impl_->on_sighup = std::move(handler); }

void Server::SetTls(std::shared_ptr<const ServerTls> tls,
                    std::shared_ptr<const BackendTls> backend_tls) {
  impl_->context.tls.store(std::move(tls), std::memory_order_release);
  impl_->context.backend_tls.store(std::move(backend_tls), std::memory_order_release);
}

void Server::Reconfigure(std::shared_ptr<const config::Config> config, bool users_changed,
                         std::shared_ptr<const ServerTls> tls,
                         std::shared_ptr<const BackendTls> backend_tls) {
  Impl& s = *impl_;
  SetTls(std::move(tls), std::move(backend_tls));
  if (users_changed) s.context.auth.store(std::make_shared<const AuthDirectory>(*config));
  std::lock_guard lock(s.workers_mu);
  s.config = config;
  if (!s.running) return;
  // The catalog was rebuilt with the new function lists before this call (ReloadController).
  health::CatalogRefresher* catalog = s.context.catalog;
  for (auto& w : s.workers) {
    asio::post(w->io, [&worker = *w, config, catalog] {
      worker.context.Reconfigure(config);
      if (catalog != nullptr) worker.context.classifier.SetCatalog(catalog->Catalog());
    });
  }
}

int Server::Run() {
  Impl& s = *impl_;
  std::shared_ptr<const config::Config> config;  // listen and workers never change on reload
  int n = 0;
  const char* rule = nullptr;  // how n was chosen, for the log
  {
    // From here a reload reaches the workers (posted; they run it once their thread starts).
    std::lock_guard lock(s.workers_mu);
    config = s.config;
    n = WorkerCount(*config, &rule);
    for (int i = 0; i < n; ++i) {
      s.workers.push_back(std::make_unique<Worker>(config));
      s.workers.back()->context.metrics = &s.context.metrics->WorkerShard(i);
      s.workers.back()->context.backends.SetMetrics(s.workers.back()->context.metrics,
                                                    s.context.metrics);
    }
    s.running = true;
  }

  tcp::acceptor acceptor(s.main_io);
  error_code ec;
  auto address = asio::ip::make_address(config->listen.host, ec);
  if (ec) {
    PGRELAY_LOG(kError, "listener", "invalid listen address " << config->listen.ToString());
    s.Stopped();
    return 1;
  }
  tcp::endpoint endpoint(address, config->listen.port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    PGRELAY_LOG(kError, "listener",
                "cannot listen on " << config->listen.ToString() << ": " << ec.message());
    s.Stopped();
    return 1;
  }

  for (size_t i = 0; i < s.workers.size(); ++i) {
    Worker* w = s.workers[i].get();
    asio::co_spawn(w->io, WatchTopology(&s.context, w), asio::detached);
    w->thread = std::thread(RunWorker, w, i);
  }

  // SIGHUP: reload, again and again; SIGINT / SIGTERM: stop (ending the SIGHUP wait too, so
  // main_io runs out of work).
  asio::signal_set hangup(s.main_io, SIGHUP);
  std::function<void(error_code, int)> on_hangup = [&](error_code ec, int) {
    if (ec) return;
    if (s.on_sighup) {
      PGRELAY_LOG(kInfo, "server", "received SIGHUP, reloading the configuration");
      s.on_sighup();
    }
    hangup.async_wait(on_hangup);
  };
  hangup.async_wait(on_hangup);
  asio::signal_set signals(s.main_io, SIGINT, SIGTERM);
  signals.async_wait([&](error_code, int signo) {
    PGRELAY_LOG(kInfo, "server", "received signal " << signo << ", shutting down");
    error_code ignored;
    acceptor.close(ignored);
    hangup.cancel(ignored);
  });
  asio::co_spawn(s.main_io, s.Accept(acceptor), asio::detached);
  PGRELAY_LOG(
      kInfo, "server",
      "listening on " << config->listen.ToString() << " with " << n << " workers (" << rule << ")");
  s.main_io.run();
  s.Stopped();

  for (auto& w : s.workers) asio::post(w->io, [&w = *w] { w.BeginShutdown(); });
  for (auto& w : s.workers) w->thread.join();
  s.workers.clear();
  PGRELAY_LOG(kInfo, "server", "stopped");
  return 0;
}

}  // namespace pgrelay::proxy
