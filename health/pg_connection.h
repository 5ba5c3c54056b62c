// PgConnection: one libpq connection driven non-blocking on an Asio executor (GUIDE §2):
// PQconnectStartParams/PQconnectPoll, PQsendQuery/PQconsumeInput/PQisBusy, waited on PQsocket()
// through a posix::stream_descriptor; every operation has a deadline. Used by one coroutine at a
// time on the executor's thread; not thread-safe.
#pragma once

#include <libpq-fe.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "health/probe_sample.h"

namespace pgrelay::health {

struct PgConnectParams {
  std::string host;
  uint16_t port = 5432;
  std::string user;
  std::string password;  // empty: libpq's usual fallbacks (PGPASSWORD, ~/.pgpass)
  std::string dbname;
  std::string application_name = "pgrelay-health";
  // libpq's sslmode, sslrootcert, sslcert, sslkey (config backend.tls); empty = libpq default.
  std::string sslmode;
  std::string sslrootcert;
  std::string sslcert;
  std::string sslkey;

  bool operator==(const PgConnectParams&) const = default;
};

struct PgResult {
  std::vector<ResultRow> rows;  // rows of the last result that returned tuples
  std::string command_status;   // e.g. "SELECT 1" (of the last result)
};

// The parameters of pgrelay's own connections to a node (health and LSN probes, failover).
inline PgConnectParams NodeConnectParams(const std::string& host, uint16_t port,
                                         const std::string& user, const std::string& password,
                                         const std::string& dbname, const char* application_name,
                                         const config::BackendTlsConfig& tls) {
  PgConnectParams p;
  p.sslmode = std::string(config::ToString(tls.mode));
  p.sslrootcert = tls.ca_file;
  p.sslcert = tls.cert_file;
  p.sslkey = tls.key_file;
  p.host = host;
  p.port = port;
  p.user = user;
  p.password = password;
  p.dbname = dbname;
  p.application_name = application_name;
  return p;
}

// `params` as a libpq conninfo string (values quoted), for APIs that take one.
std::string ToConninfo(const PgConnectParams& params);

class PgConnection {
 public:
  using Clock = std::chrono::steady_clock;

  explicit PgConnection(boost::asio::any_io_executor executor);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Opens a new connection (closing any previous one). False with error() set on failure,
  // timeout (kTimedOut) or Cancel() ("cancelled").
  boost::asio::awaitable<bool> Connect(const PgConnectParams& params, Clock::time_point deadline);
  // Runs `sql` (simple query protocol; several statements allowed). False with error() set on
  // failure, timeout or Cancel(); the connection is then closed unless only the SQL failed
  // (an ErrorResponse on a healthy connection).
  boost::asio::awaitable<bool> Query(const char* sql, Clock::time_point deadline, PgResult* out);

  static constexpr const char* kTimedOut = "timed out";  // error() after a missed deadline

  bool connected() const { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }
  const std::string& error() const { return error_; }
  bool timed_out() const { return timed_out_; }  // the last operation missed its deadline
  bool cancelled() const { return cancelled_; }
  // Server parameter reported at login (e.g. "in_hot_standby"); empty if unknown.
  std::string ParameterStatus(const char* name) const;
  void Close();
  // Ends the pending operation (it returns false) and every later one. Executor thread only.
  void Cancel();

 private:
  // Waits until PQsocket() is readable/writable. The descriptor is registered for this wait only:
  // libpq may replace its socket (several hosts/addresses; SSL/GSS fallback) and Asio's
  // edge-triggered epoll would miss readiness that arrived while nothing waited.
  boost::asio::awaitable<bool> Wait(bool for_write);
  void ArmDeadline(Clock::time_point deadline);
  void DisarmDeadline();
  bool Fail(std::string message, bool close);

  boost::asio::posix::stream_descriptor socket_;
  boost::asio::steady_timer deadline_timer_;
  uint64_t deadline_generation_ = 0;
  bool timed_out_ = false;
  bool cancelled_ = false;
  Clock::time_point deadline_{};
  PGconn* conn_ = nullptr;
  std::string error_;
};

}  // namespace pgrelay::health
