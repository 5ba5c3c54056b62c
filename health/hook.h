// Failover hooks: shell commands pgrelay runs around a promotion (failover.hooks), e.g. to fence
// the old primary's host or to rejoin it as a replica (pg_rewind + standby.signal). Run with
// /bin/sh -c in their own process group, bounded by a timeout (the group is killed after it),
// stdout and stderr captured for the log. Placeholders {name} are replaced by shell-quoted
// values.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgrelay::health {

using HookValues = std::vector<std::pair<std::string, std::string>>;

// "{failed}" -> 'pg1' for {"failed", "pg1"}; unknown placeholders stay as written.
std::string ExpandHook(std::string_view command, const HookValues& values);

struct HookResult {
  bool ok = false;       // exited with status 0 in time
  int exit_status = -1;  // -1: did not exit normally (signal, timeout, could not start)
  bool timed_out = false;
  std::string output;    // stdout + stderr, at most 64 kB
  std::string error;     // why it could not start
};

// Runs `command` on the executor's thread without blocking it (non-blocking pipe, polling
// waitpid).
boost::asio::awaitable<HookResult> RunHook(const boost::asio::any_io_executor& executor,
                                           const std::string& command,
                                           std::chrono::milliseconds timeout);

}  // namespace pgrelay::health
