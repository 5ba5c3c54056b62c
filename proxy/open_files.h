// pgrelay holds one descriptor per client connection and one per server connection: with the
// default limits.max_client_connections (1000) and three nodes, up to 4000 of them, far above
// the soft RLIMIT_NOFILE of 1024 that most systems start processes with. At start-up pgrelay
// raises its soft limit as far as the configuration needs and the hard limit allows (HAProxy
// does the same from its maxconn), again after every reload, and says so when the hard limit is
// too low.
#pragma once

#include <cstdint>
#include <string>

#include "config/config.h"

namespace pgrelay::proxy {

// Descriptors the configuration may hold at once with `workers` workers: every client with a
// connection to every node, parked pool connections (pool.mode session), and a margin for the
// listeners, the admin endpoint, health checks and logs.
uint64_t OpenFilesNeeded(const config::Config& config, int workers);

struct OpenFileLimit {
  uint64_t soft_before = 0;
  uint64_t soft = 0;  // after
  uint64_t hard = 0;
  bool raised() const { return soft > soft_before; }
};

// Raises the soft RLIMIT_NOFILE to `needed`, or to the hard limit if that is lower; never
// lowers it. On failure *error says why (the limit is then left as it was).
OpenFileLimit RaiseOpenFileLimit(uint64_t needed, std::string* error);

// RaiseOpenFileLimit(OpenFilesNeeded(config, workers)), logged: at start-up and after every
// reload (a larger limits.max_client_connections may need more). A warning says what to do
// when the hard limit is lower than needed.
void RaiseOpenFilesFor(const config::Config& config, int workers);

}  // namespace pgrelay::proxy
