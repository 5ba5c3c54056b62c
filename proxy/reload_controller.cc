#include "proxy/reload_controller.h"

#include <chrono>

#include "config/config_loader.h"
#include "config/log.h"
#include "config/reload.h"
#include "proxy/open_files.h"
#include "proxy/server.h"

namespace pgrelay::proxy {

namespace {

constexpr auto kApplyTimeout = std::chrono::seconds(5);

std::string Lines(const std::vector<std::string>& items, const char* prefix) {
  std::string out;
  for (const std::string& item : items) out.append(prefix).append(item).push_back('\n');
  return out;
}

}  // namespace

ReloadController::ReloadController(std::string path, std::shared_ptr<const config::Config> running,
                                   std::shared_ptr<const ServerTls> tls,
                                   std::shared_ptr<const BackendTls> backend_tls, Parts parts)
    : path_(std::move(path)),
      parts_(parts),
      running_(std::move(running)),
      tls_(std::move(tls)),
      backend_tls_(std::move(backend_tls)) {}

void ReloadController::SetServer(Server* server,
                                 const std::shared_ptr<const config::Config>& built_with) {
  std::lock_guard lock(mu_);
  server_ = server;
  if (server_ != nullptr && built_with != nullptr && built_with != running_) {
    server_->Reconfigure(running_, true, tls_, backend_tls_);
  }
}

std::shared_ptr<const config::Config> ReloadController::Current() const {
  std::lock_guard lock(mu_);
  return running_;
}

ReloadController::Outcome ReloadController::Reload() {
  std::lock_guard lock(mu_);
  admin::Shard& shard = parts_.metrics->ControlShard();
  auto fail = [&](const std::string& report) {
    shard.Inc(parts_.metrics->config_reloads.At(admin::ReloadResult::kFailure));
    PGRELAY_LOG(kError, "config",
                "reload of " << path_ << " refused, the running config stays:\n"
                             << report);
    return Outcome{false, "reload refused, the running configuration stays in effect:\n" + report};
  };

  const config::LoadResult loaded = config::LoadConfigFile(path_);
  if (!loaded.errors.empty()) {
    std::string report;
    for (const config::ConfigError& e : loaded.errors) {
      report.append("  ").append(path_).append(": ").append(e.ToString()).push_back('\n');
    }
    return fail(report);
  }
  const auto topology = parts_.monitor->Snapshot();
  const health::NodeStatus* primary = topology->Primary();
  const config::ReloadPlan plan =
      config::PlanReload(*running_, *loaded.config, primary ? primary->name : std::string());
  if (!plan.errors.empty()) return fail(Lines(plan.errors, "  "));
  std::string tls_error;
  std::shared_ptr<const ServerTls> tls = MakeServerTls(plan.config->tls, &tls_error);
  if (!tls_error.empty()) return fail("  " + tls_error + "\n");
  std::shared_ptr<const BackendTls> backend_tls =
      MakeBackendTls(plan.config->backend_tls, &tls_error);
  if (!tls_error.empty()) return fail("  " + tls_error + "\n");

  // Apply: the monitor first (it publishes the new node slots), then everything that routes.
  const std::shared_ptr<const config::Config>& next = plan.config;
  Log::SetLevel(next->log_level);
  if (!parts_.monitor->Reconfigure(next, kApplyTimeout)) {
    PGRELAY_LOG(kWarning, "config",
                "the health monitor did not take the new config within "
                    << kApplyTimeout.count() << " s; it will when it is free");
  }
  RaiseOpenFilesFor(*next, Server::WorkerCount(*next));
  parts_.lsn->Reconfigure(next);
  parts_.catalog->Reconfigure(next);
  parts_.metrics->Reconfigure(*next);
  if (parts_.admin != nullptr) parts_.admin->SetToken(next->admin_token);
  if (server_ != nullptr) server_->Reconfigure(next, plan.users_changed, tls, backend_tls);
  running_ = next;
  tls_ = std::move(tls);
  backend_tls_ = std::move(backend_tls);
  shard.Inc(parts_.metrics->config_reloads.At(admin::ReloadResult::kSuccess));

  std::string report;
  if (plan.changes.empty()) report = "  no change\n";
  report += Lines(plan.changes, "  ");
  for (const std::string& w : loaded.warnings)
    report.append("  warning: ").append(w).push_back('\n');
  if (!plan.restart_needed.empty()) {
    std::string keys;
    for (const std::string& k : plan.restart_needed) keys += (keys.empty() ? "" : ", ") + k;
    report += "  not applied until pgrelay restarts: " + keys + "\n";
  }
  PGRELAY_LOG(kInfo, "config", "reloaded " << path_ << ":\n" << report);
  return Outcome{true, "reloaded " + path_ + ":\n" + report};
}

}  // namespace pgrelay::proxy
