// NodeProbe: the health probe of one node. Keeps one monitoring connection open between probes
// (reconnecting when it broke) and runs kProbeSql on it within a deadline. Lives on the
// monitor's thread; not thread-safe.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <string>

#include "health/pg_connection.h"
#include "health/probe_sample.h"

namespace pgrelay::health {

struct ProbeOutcome {
  bool ok = false;
  ProbeSample sample;  // if ok
  std::string error;   // if !ok: what failed, no secrets
};

class NodeProbe {
 public:
  using Clock = std::chrono::steady_clock;

  NodeProbe(boost::asio::any_io_executor executor, PgConnectParams params);

  // One probe; connects first if there is no open connection. `timeout` is only for messages.
  boost::asio::awaitable<ProbeOutcome> Run(Clock::time_point deadline,
                                           std::chrono::milliseconds timeout);
  void Cancel() { conn_.Cancel(); }  // ends a running probe and every later one
  void Close() { conn_.Close(); }
  // New connection parameters (a config reload changed the credentials): the next probe
  // connects afresh with them.
  void SetParams(PgConnectParams params) {
    if (params == params_) return;
    params_ = std::move(params);
    reconnect_ = true;
  }

 private:
  PgConnectParams params_;
  bool reconnect_ = false;
  PgConnection conn_;
};

}  // namespace pgrelay::health
