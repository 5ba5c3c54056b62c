// What the sessions of one worker share: buffer pool, classifier cache, router and per-node
// in-flight counts. Owned by one worker thread; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "config/config.h"
#include "proxy/admin/metrics.h"
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

  BufferPool pool;
  routing::Classifier classifier;
  routing::Router router;
  std::vector<uint32_t> in_flight;  // statements outstanding per node slot (config::kMaxNodes)
  uint32_t first_replica_rr = 0;    // sessions started on a replica (no primary), round robin
  admin::Shard* metrics = nullptr;  // this worker's metrics shard (written by this thread only)
};

}  // namespace pgrelay::proxy
