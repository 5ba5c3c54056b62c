#include "config/reload.h"

#include <string>

namespace pgrelay::config {

namespace {

std::string Millis(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

// The running node list with `loaded`'s nodes mapped onto slots: a node keeps its slot when its
// name and address are unchanged (removed slots come back the same way), anything else is a new
// slot at the end; running nodes missing from `loaded` become removed slots.
void MergeNodes(const Config& running, const Config& loaded, std::string_view primary, Config* next,
                ReloadPlan* plan) {
  next->nodes = running.nodes;
  std::vector<bool> kept(next->nodes.size(), false);
  for (const NodeConfig& node : loaded.nodes) {
    int slot = -1;
    for (size_t i = 0; i < next->nodes.size(); ++i) {
      const NodeConfig& old = next->nodes[i];
      if (!kept[i] && old.name == node.name && old.host == node.host && old.port == node.port) {
        slot = static_cast<int>(i);
        break;
      }
    }
    const std::string address = Endpoint{node.host, node.port}.ToString();
    if (slot < 0) {
      if (next->nodes.size() >= kMaxNodes) {
        plan->errors.push_back("nodes: adding " + node.name + " (" + address +
                               ") needs a node slot, and all " + std::to_string(kMaxNodes) +
                               " are used (removed nodes keep theirs until restart); restart "
                               "pgrelay to apply this node list");
        continue;
      }
      next->nodes.push_back(node);
      kept.push_back(true);
      plan->changes.push_back("node " + node.name + " (" + address + ") added");
      continue;
    }
    NodeConfig& old = next->nodes[slot];
    kept[slot] = true;
    if (old.removed) {
      plan->changes.push_back("node " + node.name + " (" + address + ") added back");
    } else if (old.weight != node.weight) {
      plan->changes.push_back("node " + node.name + " weight " + std::to_string(old.weight) +
                              " -> " + std::to_string(node.weight));
    }
    old = node;
  }
  for (size_t i = 0; i < next->nodes.size(); ++i) {
    NodeConfig& node = next->nodes[i];
    if (kept[i] || node.removed) continue;
    const std::string address = Endpoint{node.host, node.port}.ToString();
    if (!primary.empty() && node.name == primary) {
      plan->errors.push_back("nodes: " + node.name + " (" + address +
                             ") is the primary and cannot be removed or moved by a reload; "
                             "switch over to another node first (POST /switchover?to=NODE)");
      continue;
    }
    node.removed = true;
    plan->changes.push_back("node " + node.name + " (" + address + ") removed");
  }
  if (next->nodes != running.nodes) plan->nodes_changed = true;
}

template <typename T>
void Note(std::vector<std::string>* changes, const char* key, const T& before, const T& after) {
  if (before == after) return;
  changes->push_back(std::string(key) + " changed");
}

}  // namespace

ReloadPlan PlanReload(const Config& running, const Config& loaded, std::string_view primary) {
  ReloadPlan plan;
  auto next = std::make_shared<Config>(loaded);

  // Start-up only: keep what runs, say what waits for a restart.
  auto keep = [&](bool changed, const char* key) {
    if (changed) plan.restart_needed.push_back(key);
  };
  keep(!(loaded.listen == running.listen), "listen");
  keep(loaded.workers != running.workers, "workers");
  keep(!(loaded.admin_listen == running.admin_listen), "admin.listen");
  keep(loaded.failover.mode != running.failover.mode, "failover.mode");
  keep(loaded.failover.state_file != running.failover.state_file, "failover.state_file");
  keep(loaded.health.database != running.health.database, "health.database");
  keep(!(loaded.coordination == running.coordination), "coordination");
  next->listen = running.listen;
  next->workers = running.workers;
  next->admin_listen = running.admin_listen;
  next->failover.mode = running.failover.mode;
  next->failover.state_file = running.failover.state_file;
  next->health.database = running.health.database;
  next->coordination = running.coordination;
  if (next->admin_token.empty() && !IsLoopbackHost(next->admin_listen.host)) {
    plan.errors.push_back("admin.token: cannot be removed while the admin endpoint listens on " +
                          next->admin_listen.ToString() + " (not loopback)");
  }

  MergeNodes(running, loaded, primary, next.get(), &plan);

  if (loaded.strategy != running.strategy) {
    plan.changes.push_back("routing.strategy " + std::string(ToString(running.strategy)) + " -> " +
                           std::string(ToString(loaded.strategy)) +
                           " (sessions switch at their next transaction boundary)");
  }
  Note(&plan.changes, "routing (rules, functions, lag bounds, load balancing, overrides)",
       running.routing, loaded.routing);
  plan.users_changed = !(loaded.users == running.users) || loaded.auth != running.auth;
  if (plan.users_changed) plan.changes.push_back("users / auth changed (new logins)");
  Note(&plan.changes, "backend credentials (new backend connections)", running.backend,
       loaded.backend);
  Note(&plan.changes, "admin.token", running.admin_token, loaded.admin_token);
  Note(&plan.changes, "tls (client side)", running.tls, loaded.tls);
  Note(&plan.changes, "backend TLS (new node connections and probes)", running.backend_tls,
       loaded.backend_tls);
  Note(&plan.changes, "limits (new sessions)", running.limits, loaded.limits);
  Note(&plan.changes, "pool (connections parked from now on)", running.pool, loaded.pool);
  if (loaded.health.interval != running.health.interval ||
      loaded.health.timeout != running.health.timeout ||
      loaded.health.failure_threshold != running.health.failure_threshold ||
      loaded.health.recovery_threshold != running.health.recovery_threshold) {
    plan.changes.push_back("health: interval " + Millis(loaded.health.interval) + ", timeout " +
                           Millis(loaded.health.timeout) + ", thresholds " +
                           std::to_string(loaded.health.failure_threshold) + "/" +
                           std::to_string(loaded.health.recovery_threshold));
  }
  // next->failover already has the running mode and state_file (restart-only, reported above).
  Note(&plan.changes, "failover (hooks, timeouts, control credentials)", running.failover,
       next->failover);
  if (loaded.log_level != running.log_level) {
    plan.changes.push_back("log_level " + std::string(ToString(running.log_level)) + " -> " +
                           std::string(ToString(loaded.log_level)));
  }
  if (plan.errors.empty()) plan.config = std::move(next);
  return plan;
}

}  // namespace pgrelay::config
