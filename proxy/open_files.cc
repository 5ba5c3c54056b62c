#include "proxy/open_files.h"

#include <sys/resource.h>

#include <cerrno>
#include <cstring>

#include "config/log.h"

namespace pgrelay::proxy {

uint64_t OpenFilesNeeded(const config::Config& config, int workers) {
  const uint64_t nodes = config.nodes.size();
  const uint64_t clients = static_cast<uint64_t>(std::max(config.limits.max_client_connections, 0));
  uint64_t needed = clients * (1 + nodes);
  if (config.pool.mode == config::PoolMode::kSession) {
    needed += static_cast<uint64_t>(std::max(config.pool.max_idle, 0)) *
              static_cast<uint64_t>(std::max(workers, 1)) * nodes;
  }
  return needed + 256;
}

OpenFileLimit RaiseOpenFileLimit(uint64_t needed, std::string* error) {
  OpenFileLimit out;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    *error = std::string("getrlimit(RLIMIT_NOFILE): ") + std::strerror(errno);
    return out;
  }
  out.soft_before = out.soft = limit.rlim_cur;
  out.hard = limit.rlim_max;
  if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= needed) return out;
  const rlim_t target = limit.rlim_max == RLIM_INFINITY ? static_cast<rlim_t>(needed)
                                                        : std::min<rlim_t>(needed, limit.rlim_max);
  if (target <= limit.rlim_cur) return out;
  limit.rlim_cur = target;
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    *error = std::string("setrlimit(RLIMIT_NOFILE): ") + std::strerror(errno);
    return out;
  }
  out.soft = target;
  return out;
}

void RaiseOpenFilesFor(const config::Config& config, int workers) {
  const uint64_t needed = OpenFilesNeeded(config, workers);
  std::string error;
  const OpenFileLimit limit = RaiseOpenFileLimit(needed, &error);
  if (!error.empty()) {
    PGRELAY_LOG(kWarning, "server", "could not raise the open files limit: " << error);
  } else if (limit.raised()) {
    PGRELAY_LOG(kInfo, "server",
                "open files limit raised from " << limit.soft_before << " to " << limit.soft);
  }
  if (limit.soft < needed) {
    PGRELAY_LOG(kWarning, "server",
                "open files are limited to "
                    << limit.soft << " (hard limit " << limit.hard
                    << "), but limits.max_client_connections "
                    << config.limits.max_client_connections << " with " << config.nodes.size()
                    << " nodes may need " << needed
                    << ": raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower "
                       "limits.max_client_connections");
  }
}

}  // namespace pgrelay::proxy
