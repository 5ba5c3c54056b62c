// RecordWatcher: follows the shared failover record (<prefix>/record, coordination.etcd) through
// an etcd watch on a thread of its own ("pgrelay-watch"), so that a record written by another
// pgrelay reaches this one at once rather than at its next read.
//
// Each pass reads the key (a Range), reports its value, then watches it from just after that
// read's revision and reports every change; when the watch fails (etcd unreachable, stream
// ended, history compacted) it waits `retry` and starts a new pass, so nothing is missed: the
// Range of the next pass reports the current value.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "config/config.h"
#include "health/cluster_state.h"

namespace pgrelay::health {

class RecordWatcher {
 public:
  // Called on the watcher's thread with the record and its etcd mod revision (not while the
  // key does not exist). Values that do not parse are logged and skipped.
  using OnRecord = std::function<void(const ClusterRecord& record, int64_t mod_revision)>;

  RecordWatcher(const config::EtcdConfig& etcd, OnRecord on_record,
                std::chrono::milliseconds retry = std::chrono::milliseconds(500));
  ~RecordWatcher();  // Stop()
  RecordWatcher(const RecordWatcher&) = delete;
  RecordWatcher& operator=(const RecordWatcher&) = delete;

  void Start();
  void Stop();  // returns within about 200 ms plus one etcd request timeout

 private:
  void Run();
  bool Stopping();

  const config::EtcdConfig etcd_;
  const OnRecord on_record_;
  const std::chrono::milliseconds retry_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace pgrelay::health
