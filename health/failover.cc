#include "health/failover.h"

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cctype>
#include <cstdlib>
#include <utility>
#include <vector>

#include "config/log.h"
#include "health/pg_connection.h"
#include "health/probe_sample.h"

namespace pgrelay::health {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr auto kPoll = std::chrono::milliseconds(20);
constexpr auto kStreamWait = std::chrono::seconds(15);

PgConnectParams ControlParams(const config::Config& config, const NodeStatus& node) {
  const config::BackendCredentials creds =
      config.failover.control ? *config.failover.control : config.MonitorCredentials();
  return NodeConnectParams(node.host, node.port, creds.user, creds.password, config.health.database,
                           "pgrelay-failover", config.backend_tls);
}

std::string Literal(std::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

std::string Cell(const PgResult& r, size_t col) {
  if (r.rows.size() != 1 || r.rows[0].size() <= col || !r.rows[0][col]) return {};
  return *r.rows[0][col];
}

asio::awaitable<void> Sleep(const asio::any_io_executor& executor, Clock::duration d) {
  asio::steady_timer timer(executor, d);
  co_await timer.async_wait(kNoThrow);
}

// Registers a connection with the FailoverCancel for its lifetime.
class Registered {
 public:
  Registered(FailoverCancel& cancel, PgConnection* c) : cancel_(cancel), c_(c) { cancel_.Add(c_); }
  ~Registered() { cancel_.Remove(c_); }
  Registered(const Registered&) = delete;
  Registered& operator=(const Registered&) = delete;

 private:
  FailoverCancel& cancel_;
  PgConnection* c_;
};

}  // namespace

std::optional<PromotionPlan> PlanPromotion(const Topology& t, int recorded,
                                           const config::Config& config, std::string* why_not) {
  why_not->clear();
  if (recorded < 0 || static_cast<size_t>(recorded) >= t.nodes.size()) return std::nullopt;
  const NodeStatus& old = t.nodes[recorded];
  if (old.state != NodeHealth::kDown || t.primary >= 0) return std::nullopt;
  PromotionPlan plan;
  plan.failed = recorded;
  for (size_t i = 0; i < t.nodes.size(); ++i) {
    const NodeStatus& n = t.nodes[i];
    if (static_cast<int>(i) == recorded || n.role != NodeRole::kReplica ||
        n.state != NodeHealth::kUp) {
      continue;
    }
    if (!n.wal_receiver_streaming.has_value()) {
      *why_not = "cannot tell whether replica " + n.name +
                 " still streams from the primary (grant the probe role pg_monitor); no promotion";
      return std::nullopt;
    }
    if (*n.wal_receiver_streaming) {
      *why_not = "replica " + n.name + " still streams from the primary " + old.name +
                 ": pgrelay cannot reach it but it is alive (a network problem), no promotion";
      return std::nullopt;
    }
    const uint64_t lsn = std::max(n.receive_lsn, n.replay_lsn);
    if (plan.candidate < 0 || lsn > plan.candidate_lsn) {
      plan.candidate = static_cast<int>(i);
      plan.candidate_lsn = lsn;
    }
  }
  if (plan.candidate < 0) {
    *why_not = "the primary " + old.name + " is down and no replica is up to promote";
    return std::nullopt;
  }
  const uint64_t bound = config.failover.max_lag_bytes;
  if (bound > 0 && old.current_lsn > plan.candidate_lsn + bound) {
    *why_not = "the most advanced replica " + t.nodes[plan.candidate].name + " is " +
               std::to_string(old.current_lsn - plan.candidate_lsn) +
               " bytes behind the failed primary, more than failover.max_lag_bytes; no promotion";
    return std::nullopt;
  }
  return plan;
}

asio::awaitable<PromotionResult> Promote(const asio::any_io_executor& executor,
                                         const config::Config& config, const NodeStatus& candidate,
                                         FailoverCancel& cancel) {
  PromotionResult result;
  const Clock::time_point deadline = Clock::now() + config.failover.promote_timeout;
  PgConnection conn(executor);
  Registered registered(cancel, &conn);
  const PgConnectParams params = ControlParams(config, candidate);
  if (!co_await conn.Connect(params, deadline)) {
    result.error = "connecting to " + candidate.name + ": " + conn.error();
    co_return result;
  }
  // Replay everything received first: promotion would otherwise drop it.
  for (;;) {
    PgResult r;
    // pg_is_wal_replay_paused() fails outside recovery: ask only during it (a node already
    // promoted, by an earlier try or by another pgrelay racing this one, is a success).
    if (!co_await conn.Query("SELECT pg_is_in_recovery(),"
                             " CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,"
                             " pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()",
                             deadline, &r)) {
      result.error = "checking replay on " + candidate.name + ": " + conn.error();
      co_return result;
    }
    if (Cell(r, 0) == "f") break;  // already promoted (a retry)
    if (Cell(r, 1) == "t") {
      PgResult ignored;
      co_await conn.Query("SELECT pg_wal_replay_resume()", deadline, &ignored);
    }
    const uint64_t received = ParseLsn(Cell(r, 2)).value_or(0);
    const uint64_t replayed = ParseLsn(Cell(r, 3)).value_or(0);
    if (replayed >= received) {
      PgResult promoted;
      const long seconds = std::max<long>(
          1, std::chrono::duration_cast<std::chrono::seconds>(deadline - Clock::now()).count());
      const std::string sql = "SELECT pg_promote(true, " + std::to_string(seconds) + ")";
      if (!co_await conn.Query(sql.c_str(), deadline, &promoted)) {
        result.error = "pg_promote() on " + candidate.name + ": " + conn.error();
        co_return result;
      }
      if (Cell(promoted, 0) != "t") {
        result.error = "pg_promote() on " + candidate.name + " did not finish in time";
        co_return result;
      }
      break;
    }
    if (Clock::now() >= deadline || cancel.stopped()) {
      result.error = candidate.name + " did not replay the WAL it received within " +
                     std::to_string(config.failover.promote_timeout.count()) +
                     " ms (failover.promote_timeout)";
      co_return result;
    }
    co_await Sleep(executor, kPoll);
  }
  PgResult tl;
  if (!co_await conn.Query("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
                           "::bit(32)::bigint",
                           deadline, &tl)) {
    result.error = "reading the new timeline of " + candidate.name + ": " + conn.error();
    co_return result;
  }
  result.timeline = static_cast<uint32_t>(std::strtoul(Cell(tl, 0).c_str(), nullptr, 10));
  result.ok = true;
  co_return result;
}

asio::awaitable<std::string> Repoint(const asio::any_io_executor& executor,
                                     const config::Config& config, const NodeStatus& primary,
                                     const NodeStatus& replica, FailoverCancel& cancel) {
  const Clock::time_point deadline = Clock::now() + config.failover.promote_timeout;
  PgConnection conn(executor);
  Registered registered(cancel, &conn);
  const PgConnectParams params = ControlParams(config, replica);
  if (!co_await conn.Connect(params, deadline)) {
    co_return "connecting to " + replica.name + ": " + conn.error();
  }
  PgResult settings;
  if (!co_await conn.Query(
          "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')",
          deadline, &settings)) {
    co_return "reading primary_conninfo on " + replica.name + ": " + conn.error();
  }
  const std::string slot = Cell(settings, 1);
  PGRELAY_LOG(kDebug, "failover", "re-pointing " << replica.name << " (slot '" << slot << "')");
  if (!slot.empty()) {
    PgConnection p(executor);
    Registered registered_primary(cancel, &p);
    const PgConnectParams primary_params = ControlParams(config, primary);
    if (!co_await p.Connect(primary_params, deadline)) {
      co_return "connecting to the new primary " + primary.name + ": " + p.error();
    }
    const std::string sql = "SELECT pg_create_physical_replication_slot(" + Literal(slot) +
                            ") WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE "
                            "slot_name = " +
                            Literal(slot) + ")";
    PgResult ignored;
    if (!co_await p.Query(sql.c_str(), deadline, &ignored)) {
      co_return "creating replication slot " + slot + " on " + primary.name + ": " + p.error();
    }
  }
  const std::string conninfo = RewriteConninfo(Cell(settings, 0), primary.host, primary.port);
  PGRELAY_LOG(kDebug, "failover",
              "slot ready; primary_conninfo of " << replica.name << " -> " << primary.host << ":"
                                                 << primary.port);
  const std::string alter = "ALTER SYSTEM SET primary_conninfo = " + Literal(conninfo);
  PgResult ignored;
  bool ok = co_await conn.Query(alter.c_str(), deadline, &ignored);
  if (ok) ok = co_await conn.Query("SELECT pg_reload_conf()", deadline, &ignored);
  if (!ok) co_return "re-pointing " + replica.name + ": " + conn.error();
  PGRELAY_LOG(kDebug, "failover", replica.name << " re-pointed; waiting for it to stream");
  // Verify: its WAL receiver streams from the new primary.
  const std::string check = "SELECT status, sender_port FROM pg_stat_wal_receiver";
  const std::string port = std::to_string(primary.port);
  const Clock::time_point until = Clock::now() + kStreamWait;
  while (Clock::now() < until && !cancel.stopped()) {
    PgResult r;
    const Clock::time_point query_deadline = Clock::now() + std::chrono::seconds(5);
    const bool answered = co_await conn.Query(check.c_str(), query_deadline, &r);
    if (answered && Cell(r, 0) == "streaming" && Cell(r, 1) == port) co_return std::string();
    co_await Sleep(executor, std::chrono::milliseconds(100));
  }
  co_return replica.name + " does not stream from " + primary.name +
      " yet (re-pointed; its WAL "
      "receiver keeps retrying)";
}

std::vector<std::pair<std::string, std::string>> PromotionHookValues(const NodeStatus& failed,
                                                                     const NodeStatus& candidate,
                                                                     uint64_t epoch) {
  return {{"failed", failed.name},
          {"failed_host", failed.host},
          {"failed_port", std::to_string(failed.port)},
          {"candidate", candidate.name},
          {"candidate_host", candidate.host},
          {"candidate_port", std::to_string(candidate.port)},
          {"epoch", std::to_string(epoch)}};
}

std::string RewriteConninfo(std::string_view conninfo, std::string_view host, uint16_t port) {
  std::vector<std::pair<std::string, std::string>> kv;
  size_t i = 0;
  auto space = [&] {
    while (i < conninfo.size() && std::isspace(static_cast<unsigned char>(conninfo[i]))) ++i;
  };
  for (;;) {
    space();
    if (i >= conninfo.size()) break;
    std::string key;
    while (i < conninfo.size() && conninfo[i] != '=' &&
           !std::isspace(static_cast<unsigned char>(conninfo[i]))) {
      key += conninfo[i++];
    }
    space();
    if (i < conninfo.size() && conninfo[i] == '=') ++i;
    space();
    std::string value;
    if (i < conninfo.size() && conninfo[i] == '\'') {
      ++i;
      while (i < conninfo.size() && conninfo[i] != '\'') {
        if (conninfo[i] == '\\' && i + 1 < conninfo.size()) ++i;
        value += conninfo[i++];
      }
      ++i;  // closing quote
    } else {
      while (i < conninfo.size() && !std::isspace(static_cast<unsigned char>(conninfo[i]))) {
        if (conninfo[i] == '\\' && i + 1 < conninfo.size()) ++i;
        value += conninfo[i++];
      }
    }
    if (key == "host" || key == "port" || key == "hostaddr") continue;
    kv.emplace_back(std::move(key), std::move(value));
  }
  kv.emplace_back("host", std::string(host));
  kv.emplace_back("port", std::to_string(port));
  std::string out;
  for (const auto& [key, value] : kv) {
    if (!out.empty()) out += ' ';
    out += key + "='";
    for (char c : value) {
      if (c == '\'' || c == '\\') out += '\\';
      out += c;
    }
    out += '\'';
  }
  return out;
}

}  // namespace pgrelay::health
