// pgrelay's own session settings, `pgrelay.*`: handled by pgrelay, never sent to PostgreSQL.
//   pgrelay.min_lsn     a causal token: the session's reads observe at least this WAL LSN
//                       (read-your-writes, quorum). SET / RESET, or `-c pgrelay.min_lsn=...`
//                       in the start-up options.
//   pgrelay.causal_lsn  read-only: the LSN covering the session's own acknowledged writes (also
//                       reported as a ParameterStatus after each write commit).
//   pgrelay.strategy    read-only: the session's routing strategy.
// This file recognizes the commands and options; ClientSession answers them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "routing/classification.h"

namespace pgrelay::proxy {

inline constexpr std::string_view kMinLsnSetting = "pgrelay.min_lsn";
inline constexpr std::string_view kCausalLsnSetting = "pgrelay.causal_lsn";
inline constexpr std::string_view kStrategySetting = "pgrelay.strategy";

struct PgrelayCommand {
  enum class Kind { kNone, kShow, kSet, kReset };
  Kind kind = Kind::kNone;
  std::string name;   // lower-cased, e.g. "pgrelay.min_lsn"
  std::string value;  // kSet: the value with SQL quoting removed
  bool local = false;  // SET LOCAL (not supported: pgrelay settings are not transactional)
};

// Recognizes a simple-query string that is exactly one SHOW, SET or RESET of a `pgrelay.*`
// setting (`c` is the string's classification). kNone for anything else.
PgrelayCommand ParsePgrelayCommand(std::string_view sql, const routing::Classification& c);

// Takes the `pgrelay.*` settings out of a start-up `options` value (`-c name=value`,
// `-cname=value`, `--name=value`; backslash escapes as PostgreSQL reads them) and returns them;
// `options` keeps everything else.
std::vector<std::pair<std::string, std::string>> ExtractPgrelayOptions(std::string* options);

}  // namespace pgrelay::proxy
