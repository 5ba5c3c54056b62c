// What the sessions of one worker share: buffer pool, classifier cache, router and per-node
// in-flight counts. Owned by one worker thread; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.h"
#include "health/monitor.h"
#include "proxy/admin/metrics.h"
#include "proxy/backend_pool.h"
#include "proxy/buffer_pool.h"
#include "routing/classifier.h"
#include "routing/router.h"

namespace pgrelay::proxy {

struct WorkerContext {
  explicit WorkerContext(std::shared_ptr<const config::Config> config);

  // Config reload, on the worker's thread: the router and the classifier take the new routing
  // settings at once; sessions adopt `config` at their next transaction boundary.
  void Reconfigure(std::shared_ptr<const config::Config> next);

  std::shared_ptr<const config::Config> config;  // the newest this worker has

  // The monitor's newest topology, fetched only when its version changed: per routed unit one
  // load of a word the monitor writes twice a second, and no reference count shared with other
  // workers. The reference stays valid until this thread calls Topology() again; a caller that
  // waits in between keeps a copy of the shared_ptr.
  const std::shared_ptr<const health::Topology>& Topology(const health::Monitor& monitor) {
    const uint64_t version = monitor.Version();
    if (topology_ == nullptr || version != topology_->version) topology_ = monitor.Snapshot();
    return topology_;
  }

  BufferPool pool;
  BackendPool backends;  // server connections parked between sessions (pool.mode: session)
  routing::Classifier classifier;
  routing::Router router;
  std::vector<uint32_t> in_flight;  // statements outstanding per node slot (config::kMaxNodes)
  uint32_t first_replica_rr = 0;    // sessions started on a replica (no primary), round robin
  admin::Shard* metrics = nullptr;  // this worker's metrics shard (written by this thread only)

 private:
  std::shared_ptr<const health::Topology> topology_;  // see Topology()
};

}  // namespace pgrelay::proxy
