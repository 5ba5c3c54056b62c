// The failover record: which node is the primary at which epoch (the fencing token), kept by a
// ClusterStateStore. A node that claims to be primary but is not the primary of the newest
// epoch is fenced. LocalStateStore keeps the record in a file (written to a temporary file,
// fsync'd, renamed over the old one, directory fsync'd), so a restarted pgrelay never routes
// writes to a stale primary. A store for several pgrelay instances (etcd) implements the same
// interface.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pgrelay::health {

struct ClusterRecord {
  uint64_t epoch = 0;
  std::string primary;    // node name
  uint32_t timeline = 0;  // the primary's timeline when recorded

  bool operator==(const ClusterRecord&) const = default;
};

class ClusterStateStore {
 public:
  virtual ~ClusterStateStore() = default;
  // The stored record; nullopt if there is none yet. False with *error on a read failure or a
  // corrupt record (pgrelay must not guess then).
  virtual bool Load(std::optional<ClusterRecord>* out, std::string* error) = 0;
  // Stores `record` durably; false with *error if it could not. Callers store before acting on
  // a record (routing writes to its primary).
  virtual bool Store(const ClusterRecord& record, std::string* error) = 0;
};

// A record kept only in memory (failover.state_file unset): lost on restart.
class MemoryStateStore final : public ClusterStateStore {
 public:
  bool Load(std::optional<ClusterRecord>* out, std::string* error) override;
  bool Store(const ClusterRecord& record, std::string* error) override;

 private:
  std::optional<ClusterRecord> record_;
};

class LocalStateStore final : public ClusterStateStore {
 public:
  explicit LocalStateStore(std::string path) : path_(std::move(path)) {}
  bool Load(std::optional<ClusterRecord>* out, std::string* error) override;
  bool Store(const ClusterRecord& record, std::string* error) override;

 private:
  std::string path_;
};

// The file format: "epoch=N\nprimary=NAME\ntimeline=T\n". Exposed for tests.
std::string FormatRecord(const ClusterRecord& record);
std::optional<ClusterRecord> ParseRecord(const std::string& text);

}  // namespace pgrelay::health
