#include "health/probe_sample.h"

#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

namespace pgrelay::health {

// Columns: in_recovery, current_lsn, receive_lsn, replay_lsn, replay_lag_seconds,
// wal_receiver_status, timeline, replay_paused, synchronous_standby_names, synchronous_commit,
// standby_name (a replica's name for synchronous_standby_names: the application_name in its
// primary_conninfo if the probe role may read it, else cluster_name, else "walreceiver"). pg_current_wal_lsn() and pg_walfile_name() fail
// during recovery, hence the CASEs (pg_current_wal_lsn is volatile: never folded early). The
// primary's timeline comes from its current WAL file name (pg_control_checkpoint() lags until the
// first checkpoint after a promotion); a replica's from its WAL receiver, else its last
// checkpoint.
const char* const kProbeSql =
    "SELECT r,"
    " CASE WHEN r THEN NULL ELSE pg_current_wal_lsn() END,"
    " pg_last_wal_receive_lsn(),"
    " pg_last_wal_replay_lsn(),"
    " CASE WHEN NOT r THEN NULL"
    " WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END,"
    " (SELECT coalesce(status, '?') FROM pg_stat_wal_receiver),"
    " CASE WHEN r THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),"
    " (SELECT timeline_id FROM pg_control_checkpoint()))"
    " ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,"
    " CASE WHEN r THEN pg_is_wal_replay_paused() ELSE false END,"
    " current_setting('synchronous_standby_names'),"
    " current_setting('synchronous_commit'),"
    " CASE WHEN r THEN coalesce(CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE') THEN"
    " substring(current_setting('primary_conninfo') FROM 'application_name=''?([^'' ]+)') END,"
    " nullif(current_setting('cluster_name'), ''), 'walreceiver') END"
    " FROM pg_is_in_recovery() AS r";

namespace {

constexpr size_t kColumns = 11;

std::optional<uint32_t> ParseHex32(std::string_view text) {
  if (text.empty() || text.size() > 8) return std::nullopt;
  uint32_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

std::optional<bool> ParseBool(const std::optional<std::string>& text) {
  if (!text) return std::nullopt;
  if (*text == "t") return true;
  if (*text == "f") return false;
  return std::nullopt;
}

}  // namespace

std::optional<bool> ProbeSample::WalReceiverStreaming() const {
  if (!in_recovery) return std::nullopt;
  if (!wal_receiver_status) return false;  // no WAL receiver running
  if (*wal_receiver_status == "?") return std::nullopt;
  return *wal_receiver_status == "streaming";
}

std::optional<uint64_t> ParseLsn(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const std::optional<uint32_t> hi = ParseHex32(text.substr(0, slash));
  const std::optional<uint32_t> lo = ParseHex32(text.substr(slash + 1));
  if (!hi || !lo) return std::nullopt;
  return (static_cast<uint64_t>(*hi) << 32) | *lo;
}

std::string FormatLsn(uint64_t lsn) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%" PRIX32 "/%" PRIX32, static_cast<uint32_t>(lsn >> 32),
                static_cast<uint32_t>(lsn));
  return buf;
}

std::optional<ProbeSample> ParseProbeRow(const ResultRow& row, std::string* error) {
  if (row.size() != kColumns) {
    *error = "probe returned " + std::to_string(row.size()) + " columns, expected " +
             std::to_string(kColumns);
    return std::nullopt;
  }
  ProbeSample s;
  const std::optional<bool> in_recovery = ParseBool(row[0]);
  if (!in_recovery) {
    *error = "probe returned no pg_is_in_recovery() value";
    return std::nullopt;
  }
  s.in_recovery = *in_recovery;
  uint64_t* const lsns[] = {&s.current_lsn, &s.receive_lsn, &s.replay_lsn};
  for (size_t i = 0; i < 3; ++i) {
    if (!row[1 + i]) continue;
    const std::optional<uint64_t> lsn = ParseLsn(*row[1 + i]);
    if (!lsn) {
      *error = "probe returned a malformed LSN '" + *row[1 + i] + "'";
      return std::nullopt;
    }
    *lsns[i] = *lsn;
  }
  if (row[4]) {
    // numeric text such as "12.345678"; strtod is locale-dependent only for the decimal point,
    // and pgrelay never calls setlocale.
    char* end = nullptr;
    const double seconds = std::strtod(row[4]->c_str(), &end);
    if (end == row[4]->c_str() || *end != '\0') {
      *error = "probe returned a malformed replay lag '" + *row[4] + "'";
      return std::nullopt;
    }
    s.replay_lag_seconds = seconds < 0 ? 0 : seconds;  // clock skew between commit and now()
  }
  s.wal_receiver_status = row[5];
  if (row[6]) {
    uint32_t timeline = 0;
    const std::string& t = *row[6];
    const auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), timeline);
    if (ec != std::errc() || ptr != t.data() + t.size()) {
      *error = "probe returned a malformed timeline '" + t + "'";
      return std::nullopt;
    }
    s.timeline = timeline;
  }
  s.replay_paused = ParseBool(row[7]).value_or(false);
  s.synchronous_standby_names = row[8].value_or("");
  s.synchronous_commit = row[9].value_or("");
  s.standby_name = row[10].value_or("");
  return s;
}

}  // namespace pgrelay::health
