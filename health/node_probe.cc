#include "health/node_probe.h"

#include <utility>

namespace pgrelay::health {
namespace {

std::string Describe(const std::string& error, std::string_view phase,
                     std::chrono::milliseconds timeout) {
  if (error == PgConnection::kTimedOut) {
    return "no answer within " + std::to_string(timeout.count()) + " ms (health.timeout) while " +
           std::string(phase);
  }
  return std::string(phase) + ": " + error;
}

}  // namespace

NodeProbe::NodeProbe(boost::asio::any_io_executor executor, PgConnectParams params)
    : params_(std::move(params)), conn_(std::move(executor)) {}

boost::asio::awaitable<ProbeOutcome> NodeProbe::Run(Clock::time_point deadline,
                                                    std::chrono::milliseconds timeout) {
  ProbeOutcome outcome;
  if (reconnect_) {
    reconnect_ = false;
    conn_.Close();
  }
  const bool reused = conn_.connected();
  if (!reused && !co_await conn_.Connect(params_, deadline)) {
    outcome.error = Describe(conn_.error(), "connecting", timeout);
    co_return outcome;
  }
  PgResult result;
  bool ok = co_await conn_.Query(kProbeSql, deadline, &result);
  if (!ok && reused && !conn_.connected() && !conn_.timed_out() && !conn_.cancelled()) {
    // The kept-open connection had broken since the last probe (server restarted, backend
    // terminated, idle timeout): that says nothing about the node now, so connect again at once.
    if (!co_await conn_.Connect(params_, deadline)) {
      outcome.error = Describe(conn_.error(), "connecting", timeout);
      co_return outcome;
    }
    ok = co_await conn_.Query(kProbeSql, deadline, &result);
  }
  if (!ok) {
    outcome.error = Describe(conn_.error(), "running the probe query", timeout);
    co_return outcome;
  }
  if (result.rows.size() != 1) {
    outcome.error = "probe query returned " + std::to_string(result.rows.size()) + " rows";
    co_return outcome;
  }
  std::string error;
  std::optional<ProbeSample> sample = ParseProbeRow(result.rows[0], &error);
  if (!sample) {
    outcome.error = std::move(error);
    co_return outcome;
  }
  outcome.ok = true;
  outcome.sample = std::move(*sample);
  co_return outcome;
}

}  // namespace pgrelay::health
