// Keeps the classifier's function catalog in step with the cluster: loads the user functions'
// volatility from the primary at start, on a timer, and soon after a session ran DDL that may
// change functions. Its own thread (blocking libpq, off the data path).
// Start/Stop from one thread; Catalog() and Poke() are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "config/config.h"
#include "health/function_catalog_loader.h"
#include "health/monitor.h"
#include "routing/function_catalog.h"

namespace pgrelay::health {

class CatalogRefresher {
 public:
  CatalogRefresher(std::shared_ptr<const config::Config> config, const Monitor* monitor);
  ~CatalogRefresher();

  void Start();
  void Stop();
  // The current catalog: built-ins and the config lists until the first load succeeds.
  std::shared_ptr<const routing::FunctionCatalog> Catalog() const {
    return catalog_.load(std::memory_order_acquire);
  }
  // Asks for a reload soon (functions may have changed). Cheap; callable from any thread.
  void Poke();
  // Functions live per database: the catalog covers every database clients have used (a
  // function name found in several counts with its most volatile definition).
  void NoteDatabase(const std::string& database);
  // Config reload: the routing function lists and credentials of `config` apply from now on
  // (the catalog is rebuilt at once from the last load).
  void Reconfigure(std::shared_ptr<const config::Config> config);

 private:
  void Loop();
  bool LoadOnce();

  std::shared_ptr<const config::Config> config_;  // guarded by mu_
  const Monitor* monitor_;
  std::atomic<std::shared_ptr<const routing::FunctionCatalog>> catalog_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool poked_ = false;
  std::set<std::string> databases_;
  std::optional<FunctionCatalogLoad> last_load_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace pgrelay::health
