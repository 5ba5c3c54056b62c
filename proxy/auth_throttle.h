// Slows down password guessing: consecutive failed logins from one client address are answered
// after a growing delay (50 ms, doubling, at most 2 s), forgotten a minute after the last
// failure or at the address's next successful login. The delay holds only the failing
// connection; everyone else is served as usual. Thread-safe (a mutex, taken once per failed
// or successful password login, never on the data path).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace pgrelay::proxy {

class AuthThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kFirstDelay{50};
  static constexpr std::chrono::milliseconds kMaxDelay{2000};
  static constexpr std::chrono::seconds kForget{60};
  static constexpr size_t kMaxAddresses = 10000;

  struct Failure {
    uint32_t in_a_row = 0;              // failures from this address without a success between
    std::chrono::milliseconds delay{};  // how long to wait before answering this one
  };

  Failure OnFailure(const std::string& address, Clock::time_point now) {
    std::lock_guard lock(mu_);
    if (entries_.size() >= kMaxAddresses) Prune(now);
    Entry& e = entries_[address];
    if (e.failures > 0 && now - e.last > kForget) e.failures = 0;
    e.failures = std::min<uint32_t>(e.failures + 1, 64);
    e.last = now;
    std::chrono::milliseconds delay = kFirstDelay;
    for (uint32_t i = 1; i < e.failures && delay < kMaxDelay; ++i) delay *= 2;
    return {e.failures, std::min(delay, kMaxDelay)};
  }

  void OnSuccess(const std::string& address) {
    std::lock_guard lock(mu_);
    entries_.erase(address);
  }

 private:
  struct Entry {
    uint32_t failures = 0;
    Clock::time_point last{};
  };

  // Drops forgotten addresses; if the table is still full (many addresses failing at once),
  // drops arbitrary ones: the bound on memory matters more than the delay of a few.
  void Prune(Clock::time_point now) {
    std::erase_if(entries_, [&](const auto& kv) { return now - kv.second.last > kForget; });
    while (entries_.size() >= kMaxAddresses) entries_.erase(entries_.begin());
  }

  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace pgrelay::proxy
