// A wake-up signal between coroutines of one worker: Wait() suspends until the next Notify().
// Callers re-check their condition in a loop. Owned by one session; not thread-safe.
#pragma once

#include "proxy/asio_common.h"

namespace pgrelay::proxy {

class Signal {
 public:
  explicit Signal(const asio::any_io_executor& executor)
      : timer_(executor, asio::steady_timer::time_point::max()) {}
  awaitable<void> Wait() {
    ++waiters_;
    co_await timer_.async_wait(kNoThrow);
    --waiters_;
  }
  // Cheap when nobody waits (the common case on the data path).
  void Notify() {
    if (waiters_ > 0) timer_.cancel();
  }

 private:
  asio::steady_timer timer_;
  int waiters_ = 0;
};

}  // namespace pgrelay::proxy
