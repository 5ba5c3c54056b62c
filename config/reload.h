// Config hot reload, the pure part: given the running config and a newly loaded (valid) one,
// decide what the process runs next. Node slots stay stable (config.h, kMaxNodes); keys that
// only take effect at start-up keep their running values and are reported. Stateless;
// thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

namespace pgrelay::config {

struct ReloadPlan {
  std::shared_ptr<const Config> config;     // what to run next; set iff errors is empty
  std::vector<std::string> errors;          // why the new file cannot be applied
  std::vector<std::string> changes;         // what changes, one line each, no secrets
  std::vector<std::string> restart_needed;  // keys changed in the file that apply at restart only
  bool users_changed = false;               // the client users or their passwords changed
  bool nodes_changed = false;               // a node was added, removed or re-weighted
};

// `primary`: the name of the node that is the primary now (empty if none is known). A reload
// may not remove it (or move it to another address): switch over first.
ReloadPlan PlanReload(const Config& running, const Config& loaded, std::string_view primary);

}  // namespace pgrelay::config
