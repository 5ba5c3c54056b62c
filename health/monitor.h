// Probes every configured node on a timer and publishes Topology snapshots.
// Start/Stop from one thread; Snapshot() is thread-safe and lock-free for readers.
//
// This first version probes with blocking libpq calls on its own thread (each bounded by the
// health timeout); the non-blocking Asio monitor with failover replaces it (health issue).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "config/config.h"
#include "health/topology.h"

namespace pgrelay::health {

class Monitor {
 public:
  explicit Monitor(std::shared_ptr<const config::Config> config);
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Runs one probe round synchronously (so the first snapshot is ready), then keeps probing
  // every health.interval on a background thread.
  void Start();
  void Stop();

  std::shared_ptr<const Topology> Snapshot() const {
    return snapshot_.load(std::memory_order_acquire);
  }

 private:
  struct Probe;  // per-node libpq connection

  void ProbeRound();
  void Loop();

  std::shared_ptr<const config::Config> config_;
  std::vector<std::unique_ptr<Probe>> probes_;
  std::atomic<std::shared_ptr<const Topology>> snapshot_;
  uint64_t version_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace pgrelay::health
