// The failover record in etcd, shared by several pgrelay instances (coordination.etcd): the key
// <prefix>/record holds the record in the state file's format (FormatRecord).
//
// Store is a compare-and-swap on the key's etcd mod revision as this store last read it. Two
// instances that both read epoch N and both try to store N + 1 cannot both succeed: the second
// is refused (false, with the winning record named in *error) and the store now knows the
// winning record, which Load returns. The epoch is the fencing token: a record is never
// overwritten by one that was decided without having seen it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "config/config.h"
#include "health/cluster_state.h"
#include "health/etcd_client.h"

namespace pgrelay::health {

class EtcdStateStore final : public ClusterStateStore {
 public:
  explicit EtcdStateStore(const config::EtcdConfig& etcd);
  // Reads the record from etcd (nullopt: none yet).
  bool Load(std::optional<ClusterRecord>* out, std::string* error) override;
  // Writes `record` only if the key is unchanged since this store last read or wrote it.
  bool Store(const ClusterRecord& record, std::string* error) override;

  // A record seen elsewhere (RecordWatcher) at etcd `mod_revision`: if it is newer than what
  // this store last saw, the next Store compares against it.
  void Observe(const ClusterRecord& record, int64_t mod_revision) {
    if (mod_revision <= seen_mod_revision_) return;
    seen_ = record;
    seen_mod_revision_ = mod_revision;
    loaded_ = true;
  }

  // The record as this store last saw it (after Load, Store, or a refused Store).
  const std::optional<ClusterRecord>& last_seen() const { return seen_; }
  static std::string RecordKey(const std::string& prefix) { return prefix + "/record"; }

 private:
  EtcdClient client_;
  std::string key_;
  bool loaded_ = false;
  int64_t seen_mod_revision_ = 0;  // 0: the key did not exist
  std::optional<ClusterRecord> seen_;
};

// The options for an EtcdClient from the config.
EtcdOptions EtcdOptionsFrom(const config::EtcdConfig& etcd);

}  // namespace pgrelay::health
