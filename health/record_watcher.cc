#include "health/record_watcher.h"

#include <optional>
#include <utility>
#include <vector>

#include "config/log.h"
#include "health/etcd_client.h"
#include "health/etcd_state_store.h"

namespace pgrelay::health {

RecordWatcher::RecordWatcher(const config::EtcdConfig& etcd, OnRecord on_record,
                             std::chrono::milliseconds retry)
    : etcd_(etcd), on_record_(std::move(on_record)), retry_(retry) {}

RecordWatcher::~RecordWatcher() { Stop(); }

void RecordWatcher::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

void RecordWatcher::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool RecordWatcher::Stopping() {
  std::lock_guard lock(mu_);
  return stopping_;
}

void RecordWatcher::Run() {
  NameThisThread("pgrelay-watch");
  const std::string key = EtcdStateStore::RecordKey(etcd_.prefix);
  EtcdClient client(EtcdOptionsFrom(etcd_));
  auto report = [&](const EtcdKeyValue& kv) {
    std::optional<ClusterRecord> record = ParseRecord(kv.value);
    if (!record) {
      PGRELAY_LOG(kWarning, "failover",
                  "ignoring an invalid failover record in etcd at " << key << ": "
                                                                    << kv.value.substr(0, 200));
      return;
    }
    on_record_(*record, kv.mod_revision);
  };
  bool failing = false;
  while (!Stopping()) {
    std::string error;
    std::optional<EtcdRangeResult> current = client.Range(key, &error);
    if (current) {
      if (!current->kvs.empty()) report(current->kvs.front());
      if (failing) PGRELAY_LOG(kInfo, "failover", "watching " << key << " in etcd again");
      failing = false;
      const auto on_events = [&](const std::vector<EtcdWatchEvent>& events) {
        for (const EtcdWatchEvent& e : events) {
          if (e.type == EtcdWatchEvent::Type::kPut) report(e.kv);
          // A deleted record is not followed: a primary never changes without a newer epoch.
        }
      };
      EtcdWatchEnd end;
      if (client.Watch(
              key, /*prefix=*/false, current->revision + 1, on_events,
              [this] { return Stopping(); }, &end, &error)) {
        break;  // stopped
      }
    }
    if (!failing) {
      PGRELAY_LOG(kWarning, "failover",
                  "cannot watch the failover record " << key << " in etcd: " << error
                                                      << "; retrying every " << retry_.count()
                                                      << " ms");
    }
    failing = true;
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, retry_, [this] { return stopping_; });
  }
}

}  // namespace pgrelay::health
