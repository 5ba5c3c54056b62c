// Process-wide logging: one line per event on stderr, written with a single write(2) so lines
// from different threads never interleave. Thread-safe. Never pass secrets to it.
#pragma once

#include <atomic>
#include <sstream>
#include <string_view>

#include "config/config.h"

namespace pgrelay {

// Names the calling thread (at most 15 characters shown), for top -H, gdb and
// tests/integration/alloc_count.cc, which counts allocations on threads named "pgrelay-w<N>".
void NameThisThread(const char* name);

class Log {
 public:
  static void SetLevel(config::LogLevel level) { level_.store(level, std::memory_order_relaxed); }
  static bool Enabled(config::LogLevel level) {
    return level >= level_.load(std::memory_order_relaxed);
  }
  static void Write(config::LogLevel level, std::string_view component, std::string_view text);

 private:
  static std::atomic<config::LogLevel> level_;
};

// Usage: PGRELAY_LOG(kInfo, "session", "client connected user=" << user);
#define PGRELAY_LOG(level, component, expr)                                                        \
  do {                                                                                             \
    if (::pgrelay::Log::Enabled(::pgrelay::config::LogLevel::level)) {                             \
      std::ostringstream pgrelay_log_os_;                                                          \
      pgrelay_log_os_ << expr;                                                                     \
      ::pgrelay::Log::Write(::pgrelay::config::LogLevel::level, component, pgrelay_log_os_.str()); \
    }                                                                                              \
  } while (0)

}  // namespace pgrelay
