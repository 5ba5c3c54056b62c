// Chooses the node for one unit of work (a simple Query, or an extended-protocol batch up to
// Sync) from what it does, the session's routing state and the current topology.
// One per worker; not thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "config/config.h"
#include "health/topology.h"
#include "routing/classification.h"
#include "routing/load_balancer.h"

namespace pgrelay::routing {

// Transaction state after a unit, as far as its text tells.
enum class TxAfter : uint8_t { kUnchanged, kInTransaction, kIdle };

// What the router needs to know about a unit (the union over its statements).
struct UnitTraits {
  bool write = false;            // must run on the primary
  bool begin = false;            // starts an explicit transaction
  bool begin_read_only = false;  // ... declared READ ONLY
  bool commits = false;          // COMMIT / END / PREPARE TRANSACTION
  TxAfter tx_after = TxAfter::kUnchanged;
  Hint hint = Hint::kNone;

  void Merge(const UnitTraits& o) {
    write |= o.write;
    begin |= o.begin;
    begin_read_only |= o.begin_read_only;
    commits |= o.commits;
    if (o.tx_after != TxAfter::kUnchanged) tx_after = o.tx_after;
    if (o.hint != Hint::kNone) hint = o.hint;
  }
};

// Derives a unit's traits from its classification. Session-bound statements (LISTEN, temporary
// objects, session advisory locks, WITH HOLD cursors, LOAD, NOTIFY) count as writes: they must
// run where the session is pinned, the primary.
UnitTraits TraitsOf(const Classification& c);

struct SessionRouting {
  config::Strategy strategy = config::Strategy::kLeader;
  bool pinned = false;             // session-bound state lives on the primary
  bool default_read_only = false;  // default_transaction_read_only is on
  // routing.replica_affinity session: the replica the session's reads went to last (-1: none);
  // it gets the read again while it is a candidate.
  int preferred_replica = -1;
};

// The consistency strategies: a read may only go to a replica that has replayed `min_lsn`.
// `replay_lsn` (indexed like topology.nodes) is the freshest replay LSN known per node; the
// topology's own is used where it is larger.
struct LsnBound {
  uint64_t min_lsn = 0;
  std::span<const uint64_t> replay_lsn;
};

struct RouteResult {
  int node = -1;  // index into topology.nodes; -1: no node (see error)
  bool to_primary = false;
  bool fell_back = false;  // a read went to the primary because no replica was eligible
  bool behind = false;     // ... and some replica was eligible but had not replayed min_lsn
  const char* error = nullptr;
};

class Router {
 public:
  // `config` must outlive the router (or its next Reconfigure). Node weights come from the
  // topology (health::NodeStatus::weight), the rest of the routing settings from `config`.
  explicit Router(const config::Config& config);
  // Config reload (on the router's thread): the routing settings of `config` from now on.
  void Reconfigure(const config::Config& config);

  RouteResult Route(const UnitTraits& unit, const SessionRouting& session,
                    const health::Topology& topology, std::span<const uint32_t> in_flight,
                    const LsnBound* bound = nullptr);

  // Whether the unit must (or may only) run on the primary for this session.
  bool NeedsPrimary(const UnitTraits& unit, const SessionRouting& session) const;
  // Whether node i may serve reads now (up, a replica, within the lag bounds, weight > 0).
  bool EligibleReplica(const health::Topology& topology, int i) const;
  // Whether node i has replayed bound.min_lsn (true without a bound).
  static bool Replayed(const health::Topology& topology, int i, const LsnBound* bound);

 private:
  const config::Config* config_;
  LoadBalancer balancer_;
  std::vector<Candidate> candidates_;  // reused: no allocation per route
};

}  // namespace pgrelay::routing
