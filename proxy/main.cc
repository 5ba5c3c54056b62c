// pgrelay: a read/write-splitting PostgreSQL proxy. Command line entry point.
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

#include "config/config_loader.h"
#include "config/log.h"
#include "health/catalog_refresher.h"
#include "health/coordinator.h"
#include "health/lsn_tracker.h"
#include "health/monitor.h"
#include "proxy/admin/admin_server.h"
#include "proxy/admin/proxy_metrics.h"
#include "proxy/open_files.h"
#include "proxy/reload_controller.h"
#include "proxy/server.h"

#ifndef PGRELAY_VERSION
#define PGRELAY_VERSION "0.0.0"
#endif

namespace {

constexpr const char* kUsage =
    "pgrelay - a read/write-splitting proxy for PostgreSQL\n"
    "\n"
    "Usage:\n"
    "  pgrelay --config FILE         run with the YAML config FILE\n"
    "  pgrelay --check-config FILE   validate FILE, print every problem, exit 0 (valid) or 1\n"
    "  pgrelay --version             print the version\n"
    "  pgrelay --help                print this help\n";

int PrintErrors(const std::string& path, const pgrelay::config::LoadResult& result) {
  for (const auto& e : result.errors)
    std::fprintf(stderr, "%s: %s\n", path.c_str(), e.ToString().c_str());
  return 1;
}

}  // namespace

// POST /switchover?to=NODE: new statements held while the monitor switches the primary over.
pgrelay::admin::ActionResult SwitchoverAction(pgrelay::health::Monitor* monitor,
                                              pgrelay::proxy::PauseGate* pause,
                                              std::string_view query) {
  constexpr std::string_view kKey = "to=";
  const std::string_view target = query.starts_with(kKey) ? query.substr(kKey.size()) : "";
  if (target.empty() || target.find('&') != std::string_view::npos) {
    return {400, "usage: POST /switchover?to=NODE (a replica's name from the config)\n"};
  }
  constexpr auto kTimeout = std::chrono::seconds(60);
  pause->Pause(kTimeout + std::chrono::seconds(5));
  const auto [ok, message] = monitor->Switchover(std::string(target), kTimeout);
  pause->Resume();
  return {ok ? 200 : 409, message + "\n"};
}

// POST /pause[?timeout=SECONDS], /resume, /switchover?to=NODE and /reload.
pgrelay::admin::ActionResult AdminAction(pgrelay::health::Monitor* monitor,
                                         pgrelay::proxy::PauseGate* pause,
                                         pgrelay::proxy::ReloadController* reload,
                                         std::string_view action, std::string_view query) {
  if (action == "switchover") return SwitchoverAction(monitor, pause, query);
  if (action == "reload") {
    if (reload == nullptr) return {503, "pgrelay is starting or stopping; try again\n"};
    const auto outcome = reload->Reload();
    // 422: the request was fine, the file is not (the running config stays).
    return {outcome.ok ? 200 : 422, outcome.report};
  }
  constexpr int kDefaultPauseSeconds = 30;
  constexpr int kMaxPauseSeconds = 3600;
  if (action == "pause") {
    int seconds = kDefaultPauseSeconds;
    if (!query.empty()) {
      constexpr std::string_view kKey = "timeout=";
      std::string_view value = query.starts_with(kKey) ? query.substr(kKey.size()) : "";
      if (value.ends_with('s')) value.remove_suffix(1);
      const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
      if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() || seconds < 1 ||
          seconds > kMaxPauseSeconds) {
        return {400, "usage: POST /pause?timeout=SECONDS (1.." + std::to_string(kMaxPauseSeconds) +
                         ", default " + std::to_string(kDefaultPauseSeconds) + ")\n"};
      }
    }
    pause->Pause(std::chrono::seconds(seconds));
    PGRELAY_LOG(kWarning, "admin",
                "paused: new statements wait at transaction boundaries for up to "
                    << seconds << " s (POST /resume ends it)");
    return {200, "paused for up to " + std::to_string(seconds) + " s\n"};
  }
  if (action == "resume") {
    pause->Resume();
    PGRELAY_LOG(kWarning, "admin", "resumed");
    return {200, "resumed\n"};
  }
  return {501, "POST /" + std::string(action) + " is not implemented yet\n"};
}

int main(int argc, char** argv) {
  std::string config_path;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--version" || arg == "-V") {
      std::printf("pgrelay %s\n", PGRELAY_VERSION);
      return 0;
    }
    if ((arg == "--config" || arg == "-c" || arg == "--check-config") && i + 1 < argc) {
      check_only = check_only || arg == "--check-config";
      config_path = argv[++i];
      continue;
    }
    std::fprintf(stderr, "pgrelay: unknown or incomplete argument '%s'\n\n%s", arg.c_str(), kUsage);
    return 2;
  }
  if (config_path.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  auto result = pgrelay::config::LoadConfigFile(config_path);
  if (!result.errors.empty()) return PrintErrors(config_path, result);
  std::string tls_error;
  const std::shared_ptr<const pgrelay::proxy::ServerTls> tls =
      pgrelay::proxy::MakeServerTls(result.config->tls, &tls_error);
  const std::shared_ptr<const pgrelay::proxy::BackendTls> backend_tls =
      tls_error.empty() ? pgrelay::proxy::MakeBackendTls(result.config->backend_tls, &tls_error)
                        : nullptr;
  if (!tls_error.empty()) {
    std::fprintf(stderr, "%s: %s\n", config_path.c_str(), tls_error.c_str());
    return 1;
  }
  if (check_only) {
    for (const std::string& w : result.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    std::printf("%s: configuration is valid\n", config_path.c_str());
    return 0;
  }
  pgrelay::Log::SetLevel(result.config->log_level);
  PGRELAY_LOG(kInfo, "server",
              "pgrelay " << PGRELAY_VERSION << " starting, config " << config_path << ", strategy "
                         << pgrelay::config::ToString(result.config->strategy));
  for (const std::string& w : result.warnings) PGRELAY_LOG(kWarning, "config", w);
  pgrelay::proxy::RaiseOpenFilesFor(*result.config,
                                    pgrelay::proxy::Server::WorkerCount(*result.config));
  pgrelay::health::Monitor monitor(result.config);
  // coordination.etcd: membership and the coordinator election (docs/coordination.md); only
  // the coordinator promotes, and only when a majority of the live members' views agree.
  std::unique_ptr<pgrelay::health::Coordinator> coordinator;
  if (result.config->coordination.etcd) {
    coordinator = std::make_unique<pgrelay::health::Coordinator>(
        *result.config->coordination.etcd, result.config->coordination.member,
        result.config->health.interval,
        [&monitor] { return pgrelay::health::DescribeView(*monitor.Snapshot()); });
    // Test hook (tests/integration/test_coordinated_failover.py): every instance started with it
    // promotes as if it were the coordinator, so that racing promotions can be shown to
    // record exactly one epoch. Never set it in production.
    const bool racing = std::getenv("PGRELAY_TEST_PROMOTE_WITHOUT_COORDINATOR") != nullptr;
    if (racing) {
      PGRELAY_LOG(kWarning, "coordination",
                  "test hook PGRELAY_TEST_PROMOTE_WITHOUT_COORDINATOR: this pgrelay promotes "
                  "without being the coordinator or asking the members");
    }
    monitor.SetPromotionGate(
        [&coordinator, racing](const std::string& failed, uint64_t epoch, std::string* why_not) {
          return racing || coordinator->MayPromote(failed, epoch, why_not);
        });
  }
  try {
    monitor.Start();
  } catch (const std::exception& e) {
    PGRELAY_LOG(kError, "failover", e.what());
    return 1;
  }
  if (coordinator) coordinator->Start();
  pgrelay::health::CatalogRefresher catalog(result.config, &monitor);
  catalog.Start();
  pgrelay::health::LsnTracker lsn(result.config, &monitor);
  lsn.Start();
  const auto& config = *result.config;
  pgrelay::admin::CoordinationSource coordination_status;
  if (coordinator) {
    coordination_status = [&coordinator]() -> std::optional<pgrelay::health::Coordinator::Status> {
      return coordinator->Snapshot();
    };
  }
  pgrelay::admin::ProxyMetrics metrics(
      config, pgrelay::proxy::Server::WorkerCount(config),
      [&monitor] { return monitor.Snapshot(); }, coordination_status);
  pgrelay::admin::AdminOptions admin_options;
  admin_options.listen = config.admin_listen;
  admin_options.token = config.admin_token;
  pgrelay::admin::AdminSources admin_sources;
  admin_sources.topology = [&monitor] { return monitor.Snapshot(); };
  admin_sources.metrics = &metrics.registry();
  admin_sources.client_connections = [&metrics] { return metrics.ClientConnections(); };
  admin_sources.backend_connections = [&metrics] { return metrics.BackendConnections(); };
  admin_sources.pool_idle_connections = [&metrics] { return metrics.PoolIdleConnections(); };
  pgrelay::proxy::PauseGate pause;
  std::unique_ptr<pgrelay::proxy::ReloadController> reload;
  admin_sources.on_action = [&pause, &monitor, &reload, &coordinator](std::string_view action,
                                                                      std::string_view query) {
    if (action == "switchover" && coordinator && !coordinator->IsCoordinator()) {
      // Only the coordinator promotes: two instances must never move the primary at once.
      const std::string holder = coordinator->Snapshot().holder;
      return pgrelay::admin::ActionResult{
          409,
          "this pgrelay (" + coordinator->Snapshot().member +
              ") is not the coordinator; send the switchover to " +
              (holder.empty() ? std::string("the coordinator (none is elected now)") : holder) +
              "\n"};
    }
    return AdminAction(&monitor, &pause, reload.get(), action, query);
  };
  admin_sources.coordination = coordination_status;
  pgrelay::admin::AdminServer admin(admin_options, admin_sources);
  reload = std::make_unique<pgrelay::proxy::ReloadController>(
      config_path, result.config, tls, backend_tls,
      pgrelay::proxy::ReloadController::Parts{&monitor, &catalog, &lsn, &metrics, &admin});
  try {
    admin.Start();
  } catch (const std::exception& e) {
    PGRELAY_LOG(kError, "admin", e.what());
    catalog.Stop();
    monitor.Stop();
    return 1;
  }
  int rc = 0;
  {
    const auto config_now = reload->Current();
    pgrelay::proxy::Server server(config_now, &monitor, &catalog, &lsn, &metrics, &pause);
    server.SetTls(tls, backend_tls);
    server.OnSighup([&reload] { reload->Reload(); });
    reload->SetServer(&server, config_now);
    rc = server.Run();
    reload->SetServer(nullptr);
  }
  admin.Stop();
  if (coordinator) coordinator->Stop(/*release=*/true);  // the others take over at once
  lsn.Stop();
  catalog.Stop();
  monitor.Stop();
  return rc;
}
