#include "health/etcd_state_store.h"

#include <utility>

namespace pgrelay::health {

EtcdOptions EtcdOptionsFrom(const config::EtcdConfig& etcd) {
  EtcdOptions options;
  for (const config::Endpoint& e : etcd.endpoints) options.endpoints.push_back(e.ToString());
  options.request_timeout = etcd.timeout;
  options.username = etcd.user;
  options.password = etcd.password;
  return options;
}

EtcdStateStore::EtcdStateStore(const config::EtcdConfig& etcd)
    : client_(EtcdOptionsFrom(etcd)), key_(RecordKey(etcd.prefix)) {}

bool EtcdStateStore::Load(std::optional<ClusterRecord>* out, std::string* error) {
  std::string why;
  std::optional<EtcdRangeResult> r = client_.Range(key_, &why);
  if (!r) {
    *error = "cannot read the failover record " + key_ + " from etcd: " + why;
    return false;
  }
  if (r->kvs.empty()) {
    seen_mod_revision_ = 0;
    seen_.reset();
  } else {
    std::optional<ClusterRecord> record = ParseRecord(r->kvs.front().value);
    if (!record) {
      *error = "the failover record " + key_ +
               " in etcd is not a valid record: " + r->kvs.front().value.substr(0, 200);
      return false;
    }
    seen_mod_revision_ = r->kvs.front().mod_revision;
    seen_ = std::move(record);
  }
  loaded_ = true;
  *out = seen_;
  return true;
}

bool EtcdStateStore::Store(const ClusterRecord& record, std::string* error) {
  if (!loaded_) {
    std::optional<ClusterRecord> ignored;
    if (!Load(&ignored, error)) return false;
  }
  EtcdTxn txn;
  txn.compare.push_back(
      EtcdCompare::ModRevision(key_, EtcdCompare::Relation::kEqual, seen_mod_revision_));
  txn.success.push_back(EtcdOp::Put(key_, FormatRecord(record)));
  txn.failure.push_back(EtcdOp::Range(key_));
  std::string why;
  std::optional<EtcdTxnResult> r = client_.Txn(txn, &why);
  if (!r) {
    // The outcome is unknown (the write may have been applied): read again before the next try.
    loaded_ = false;
    *error = "cannot write the failover record " + key_ + " to etcd: " + why;
    return false;
  }
  if (r->succeeded) {
    seen_mod_revision_ = r->revision;
    seen_ = record;
    return true;
  }
  // Someone else wrote first: learn what won.
  seen_.reset();
  seen_mod_revision_ = 0;
  if (!r->responses.empty() && !r->responses.front().kvs.empty()) {
    const EtcdKeyValue& kv = r->responses.front().kvs.front();
    seen_mod_revision_ = kv.mod_revision;
    seen_ = ParseRecord(kv.value);
  }
  *error = "another pgrelay changed the failover record first";
  if (seen_) {
    *error += ": primary " + seen_->primary + " at epoch " + std::to_string(seen_->epoch);
  }
  if (!seen_ && seen_mod_revision_ != 0) loaded_ = false;  // unreadable: read it again next time
  return false;
}

}  // namespace pgrelay::health
