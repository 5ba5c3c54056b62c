// PostgreSQL's synchronous_standby_names, parsed: which standbys confirm a commit before the
// primary acknowledges it. With synchronous_commit = remote_apply and k of n named standbys
// confirming, every acknowledged commit is applied on at least k of the n; so among any n-k+1
// of them at least one has applied it (R + W > N). Quorum reads use this when the primary is
// down. Pure functions; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::health {

struct SyncStandbys {
  bool any = false;  // ANY k (...): quorum; else FIRST k (...) (priority)
  int k = 1;
  std::vector<std::string> names;  // as the server compares them (unquoted: lower-cased)

  // How many of the named standbys must answer so that one of them has every commit.
  int ReadQuorum() const { return static_cast<int>(names.size()) - k + 1; }
};

// nullopt when empty (asynchronous replication), malformed, or when it cannot give a read
// quorum: a '*' wildcard (the set of standbys is open) or k > the number of names.
std::optional<SyncStandbys> ParseSynchronousStandbyNames(std::string_view text);

// Whether the name a standby connects with (its application_name, by default cluster_name)
// matches a configured name: case-insensitive, as PostgreSQL compares them.
bool StandbyNameMatches(std::string_view configured, std::string_view application_name);

}  // namespace pgrelay::health
