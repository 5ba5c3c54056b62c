// A deadline for one phase of a session (start-up, backend login): if it passes before
// Disarm(), the callback runs (typically closing a socket, which ends the pending I/O).
// Owned by one session on one worker; not thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "proxy/asio_common.h"

namespace pgrelay::proxy {

class Watchdog {
 public:
  explicit Watchdog(const asio::any_io_executor& executor) : timer_(executor) {}
  ~Watchdog() { Disarm(); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void Arm(std::chrono::milliseconds after, std::function<void()> on_expire) {
    Disarm();
    fired_ = false;
    armed_ = std::make_shared<bool>(true);
    timer_.expires_after(after);
    // `armed` outlives this object inside the handler; it is false once disarmed, so a handler
    // already queued when Disarm() ran does nothing.
    timer_.async_wait([this, armed = armed_, f = std::move(on_expire)](error_code ec) {
      if (ec || !*armed) return;
      *armed = false;
      fired_ = true;
      f();
    });
  }
  void Disarm() {
    if (!armed_) return;
    *armed_ = false;
    armed_.reset();
    timer_.cancel();
  }
  bool fired() const { return fired_; }

 private:
  asio::steady_timer timer_;
  std::shared_ptr<bool> armed_;
  bool fired_ = false;
};

}  // namespace pgrelay::proxy
