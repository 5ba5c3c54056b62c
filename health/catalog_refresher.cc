#include "health/catalog_refresher.h"

#include "config/log.h"
#include "health/function_catalog_loader.h"
#include "health/pg_connection.h"

namespace pgrelay::health {

namespace {

constexpr auto kRefreshInterval = std::chrono::seconds(30);
constexpr auto kRetryInterval = std::chrono::seconds(2);

routing::FunctionLists ListsOf(const config::Config& config) {
  return routing::FunctionLists{config.routing.side_effect_free_functions,
                                config.routing.primary_functions};
}

}  // namespace

CatalogRefresher::CatalogRefresher(std::shared_ptr<const config::Config> config,
                                   const Monitor* monitor)
    : config_(std::move(config)), monitor_(monitor) {
  catalog_.store(routing::FunctionCatalog::Builtin(ListsOf(*config_)));
}

CatalogRefresher::~CatalogRefresher() { Stop(); }

void CatalogRefresher::Start() {
  thread_ = std::thread([this] {
    NameThisThread("pgrelay-catalog");
    Loop();
  });
}

void CatalogRefresher::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CatalogRefresher::NoteDatabase(const std::string& database) {
  {
    std::lock_guard lock(mu_);
    if (!databases_.insert(database).second) return;
    poked_ = true;
  }
  cv_.notify_all();
}

void CatalogRefresher::Poke() {
  {
    std::lock_guard lock(mu_);
    poked_ = true;
  }
  cv_.notify_all();
}

void CatalogRefresher::Reconfigure(std::shared_ptr<const config::Config> config) {
  {
    std::lock_guard lock(mu_);
    config_ = std::move(config);
    catalog_.store(last_load_ ? MakeFunctionCatalog(*last_load_, ListsOf(*config_))
                              : routing::FunctionCatalog::Builtin(ListsOf(*config_)),
                   std::memory_order_release);
    poked_ = true;
  }
  cv_.notify_all();
}

bool CatalogRefresher::LoadOnce() {
  auto topology = monitor_->Snapshot();
  const NodeStatus* primary = topology->Primary();
  if (primary == nullptr) return false;
  std::shared_ptr<const config::Config> config;
  std::set<std::string> databases;
  {
    std::lock_guard lock(mu_);
    databases = databases_;
    config = config_;
  }
  const auto creds = config->MonitorCredentials();
  databases.insert(config->health.database);
  FunctionCatalogLoad load;
  for (const std::string& database : databases) {
    const std::string conninfo =
        ToConninfo(NodeConnectParams(primary->host, primary->port, creds.user, creds.password,
                                     database, "pgrelay-catalog", config->backend_tls));
    FunctionCatalogLoad one = LoadFunctionEntries(conninfo, config->health.timeout);
    if (!one.ok()) {
      // That database keeps what the built-ins say (unknown functions count as volatile).
      PGRELAY_LOG(kWarning, "catalog",
                  "could not load function volatility of database "
                      << database << " from " << primary->name << ": " << one.error);
      continue;
    }
    load.entries.insert(load.entries.end(), one.entries.begin(), one.entries.end());
  }
  {
    std::lock_guard lock(mu_);
    if (config_ == config) {  // else a reload came meanwhile: the next load uses its lists
      catalog_.store(MakeFunctionCatalog(load, ListsOf(*config_)), std::memory_order_release);
    }
    last_load_ = std::move(load);
  }
  PGRELAY_LOG(kDebug, "catalog", "loaded user functions from " << primary->name);
  return true;
}

void CatalogRefresher::Loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    poked_ = false;
    lock.unlock();
    bool ok = LoadOnce();
    lock.lock();
    cv_.wait_for(lock,
                 ok ? std::chrono::duration_cast<std::chrono::milliseconds>(kRefreshInterval)
                    : std::chrono::duration_cast<std::chrono::milliseconds>(kRetryInterval),
                 [this] { return stop_ || poked_; });
  }
}

}  // namespace pgrelay::health
