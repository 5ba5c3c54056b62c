// Coordinator: this pgrelay's membership among the instances sharing an etcd prefix
// (coordination.etcd) and its bid for the coordinator role, the only instance that may promote.
// Runs on a thread of its own with its own EtcdClient (docs/coordination.md):
//
//  - a lease of lease_ttl, renewed every lease_ttl / 3;
//  - <prefix>/members/<member> under that lease: this instance's view of the nodes (text from
//    the `view` callback), rewritten every interval;
//  - <prefix>/coordinator: created with this instance's lease only if absent (a transaction), so
//    at most one instance holds it; it disappears with the holder's lease. The holder acts as
//    coordinator only until (last renewal sent + granted TTL - timeout): it stops acting before
//    etcd can let the lease expire and hand the key to another instance.
//
// Accessors are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "config/config.h"
#include "health/topology.h"

namespace pgrelay::health {

class Coordinator {
 public:
  struct Status {
    std::string member;                          // this instance
    bool etcd_reachable = false;                 // the last etcd request succeeded
    bool coordinator = false;                    // this instance may act as coordinator now
    std::string holder;                          // who holds the coordinator key ("" if nobody)
    std::map<std::string, std::string> members;  // live members and their views
    std::string last_error;                      // why etcd was last unreachable
  };

  // `view` returns this instance's view of the nodes (published with its membership); called
  // on the coordinator's thread.
  Coordinator(config::EtcdConfig etcd, std::string member, std::chrono::milliseconds interval,
              std::function<std::string()> view);
  ~Coordinator();  // Stop(true)
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  void Start();
  // Ends the thread. release: revoke the lease (the coordinator key and the membership go at
  // once: a clean shutdown); false: let it expire (what a crash looks like to the others).
  void Stop(bool release = true);

  // True while this instance holds the coordinator key and its lease is certainly alive.
  bool IsCoordinator() const;
  // Whether this instance may promote a replica in place of the failed primary `failed` now
  // (failover.mode auto): it is the coordinator, and the live members' views, as last read,
  // agree (MajorityReportsDown). Otherwise false with *why_not.
  bool MayPromote(const std::string& failed, uint64_t epoch, std::string* why_not) const;
  Status Snapshot() const;

 private:
  void Run();
  // One round: lease, membership, election, members. Returns false if etcd failed.
  bool Round(std::string* error);

  struct Impl;  // the EtcdClient (keeps Beast out of this header)
  const config::EtcdConfig etcd_;
  const std::string member_;
  const std::chrono::milliseconds interval_;
  const std::function<std::string()> view_;
  std::unique_ptr<Impl> impl_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool release_ = true;
  Status status_;
  std::chrono::steady_clock::time_point acts_until_{};  // IsCoordinator() until then
  std::thread thread_;
};

// The live members' verdict on promoting in place of the primary `failed` at `epoch`: `views`
// maps each live member (the one asking included) to its published view (DescribeView). True
// if more than half of them report `failed` unreachable (state down or suspect, or its last
// probe failed) and none has seen an epoch newer than `epoch` (its decision would be based on
// an outdated record). A view that cannot be read counts against. False with *why_not.
bool MajorityReportsDown(const std::map<std::string, std::string>& views, const std::string& failed,
                         uint64_t epoch, std::string* why_not);

// This instance's view of the nodes as published with its membership: one JSON object with the
// epoch, the primary, and per node its state, role, whether it answered, its timeline and LSNs.
std::string DescribeView(const Topology& topology);

}  // namespace pgrelay::health
