// PAUSE / RESUME (admin POST /pause, /resume), like PgBouncer's PAUSE: while paused, sessions
// hold their next statement at a transaction boundary (a session inside a transaction finishes
// it). A pause ends by Resume() or when its timeout runs out, so a forgotten pause cannot hang
// clients forever. Thread-safe: written by the admin thread, read by every worker (one relaxed
// load per statement while not paused).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace pgrelay::proxy {

class PauseGate {
 public:
  using Clock = std::chrono::steady_clock;

  void Pause(std::chrono::milliseconds timeout) {
    until_.store((Clock::now() + timeout).time_since_epoch().count(), std::memory_order_release);
  }
  void Resume() { until_.store(0, std::memory_order_release); }
  // Whether new statements must wait now.
  bool Paused() const {
    const int64_t until = until_.load(std::memory_order_acquire);
    return until != 0 && Clock::now().time_since_epoch().count() < until;
  }

 private:
  std::atomic<int64_t> until_{0};  // Clock ticks; 0 = not paused
};

}  // namespace pgrelay::proxy
