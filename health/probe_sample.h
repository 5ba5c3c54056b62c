// What one health probe of a node returns (ProbeSample), the probe's SQL, and parsing of its
// result row and of PostgreSQL LSNs. Pure functions and values; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::health {

// One statement, one round trip; works for any role (pg_monitor makes the WAL receiver visible).
extern const char* const kProbeSql;

struct ProbeSample {
  bool in_recovery = false;  // true: replica (standby)
  uint64_t current_lsn = 0;  // 0 = NULL / unknown
  uint64_t receive_lsn = 0;
  uint64_t replay_lsn = 0;
  std::optional<double> replay_lag_seconds;  // replicas; 0 when receive == replay
  // pg_stat_wal_receiver.status: nullopt = no WAL receiver; "?" = not visible to the probe role.
  std::optional<std::string> wal_receiver_status;
  uint32_t timeline = 0;
  bool replay_paused = false;
  // The node's settings (they matter on the primary: quorum commit, see sync_standby.h).
  std::string synchronous_standby_names;
  std::string synchronous_commit;
  std::string standby_name;  // replica: the name it streams under (application_name)

  // nullopt for a primary or when not visible; else status == "streaming".
  std::optional<bool> WalReceiverStreaming() const;
};

// "16/B374D848" -> 0x16B374D848. nullopt if malformed.
std::optional<uint64_t> ParseLsn(std::string_view text);
std::string FormatLsn(uint64_t lsn);  // inverse of ParseLsn

using ResultRow = std::vector<std::optional<std::string>>;  // text values, nullopt = NULL
// Parses the single row kProbeSql returns; nullopt with *error set if it does not fit.
std::optional<ProbeSample> ParseProbeRow(const ResultRow& row, std::string* error);

}  // namespace pgrelay::health
