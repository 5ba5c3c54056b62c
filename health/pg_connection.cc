#include "health/pg_connection.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <utility>

namespace pgrelay::health {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

// libpq messages end in '\n' and may span lines ("connection refused\n\tIs the server ...");
// keep the first line. They never contain the password.
std::string FirstLine(const char* text) {
  std::string s = text != nullptr ? text : "";
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s.empty() ? "unknown libpq error" : s;
}

}  // namespace

PgConnection::PgConnection(asio::any_io_executor executor)
    : socket_(executor), deadline_timer_(std::move(executor)) {}

PgConnection::~PgConnection() { Close(); }

void PgConnection::Close() {
  DisarmDeadline();
  if (socket_.is_open()) socket_.release();  // libpq owns (and closes) the fd
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
}

void PgConnection::Cancel() {
  cancelled_ = true;
  error_code ignored;
  if (socket_.is_open()) socket_.cancel(ignored);
  deadline_timer_.cancel();
}

std::string PgConnection::ParameterStatus(const char* name) const {
  if (conn_ == nullptr) return {};
  const char* value = PQparameterStatus(conn_, name);
  return value != nullptr ? value : "";
}

bool PgConnection::Fail(std::string message, bool close) {
  error_ = std::move(message);
  if (close) Close();
  DisarmDeadline();
  return false;
}

void PgConnection::ArmDeadline(Clock::time_point deadline) {
  timed_out_ = false;
  deadline_ = deadline;
  const uint64_t generation = ++deadline_generation_;
  deadline_timer_.expires_at(deadline);
  // The generation check makes a handler that was already queued when the deadline was disarmed
  // (or re-armed) do nothing. The owner keeps this object alive until its executor has run dry.
  deadline_timer_.async_wait([this, generation](error_code ec) {
    if (ec || generation != deadline_generation_) return;
    timed_out_ = true;
    error_code ignored;
    if (socket_.is_open()) socket_.cancel(ignored);
  });
}

void PgConnection::DisarmDeadline() {
  ++deadline_generation_;
  deadline_timer_.cancel();
}

asio::awaitable<bool> PgConnection::Wait(bool for_write) {
  if (cancelled_) co_return Fail("cancelled", true);
  if (timed_out_ || Clock::now() >= deadline_) {
    timed_out_ = true;
    co_return Fail(kTimedOut, true);
  }
  const int fd = PQsocket(conn_);
  if (fd < 0) co_return Fail("libpq has no socket", true);
  error_code ec;
  socket_.assign(fd, ec);
  if (ec) co_return Fail("cannot watch the libpq socket: " + ec.message(), true);
  using Descriptor = asio::posix::stream_descriptor;
  auto [wait_ec] = co_await socket_.async_wait(
      for_write ? Descriptor::wait_write : Descriptor::wait_read, kNoThrow);
  socket_.release();
  if (cancelled_) co_return Fail("cancelled", true);
  if (timed_out_) co_return Fail(kTimedOut, true);
  if (wait_ec) co_return Fail("waiting on the libpq socket: " + wait_ec.message(), true);
  co_return true;
}

std::string ToConninfo(const PgConnectParams& p) {
  std::string out;
  auto add = [&](const char* key, const std::string& value) {
    if (value.empty()) return;
    out.append(out.empty() ? "" : " ").append(key).append("='");
    for (char c : value) {
      if (c == '\'' || c == '\\') out += '\\';
      out += c;
    }
    out += '\'';
  };
  add("host", p.host);
  add("port", std::to_string(p.port));
  add("user", p.user);
  add("password", p.password);
  add("dbname", p.dbname);
  add("application_name", p.application_name);
  add("sslmode", p.sslmode);
  add("sslrootcert", p.sslrootcert);
  add("sslcert", p.sslcert);
  add("sslkey", p.sslkey);
  return out;
}

asio::awaitable<bool> PgConnection::Connect(const PgConnectParams& params,
                                            Clock::time_point deadline) {
  Close();
  timed_out_ = false;
  if (cancelled_) co_return Fail("cancelled", false);
  const std::string port = std::to_string(params.port);
  // connect_timeout is ignored by PQconnectPoll; the deadline covers the whole connect.
  const char* keys[11] = {"host", "port", "user", "password", "dbname", "application_name"};
  const char* values[11] = {params.host.c_str(),   port.c_str(),
                            params.user.c_str(),   params.password.c_str(),
                            params.dbname.c_str(), params.application_name.c_str()};
  size_t n = 6;
  auto add = [&](const char* key, const std::string& value) {
    if (value.empty()) return;
    keys[n] = key;
    values[n++] = value.c_str();
  };
  add("sslmode", params.sslmode);
  add("sslrootcert", params.sslrootcert);
  add("sslcert", params.sslcert);
  add("sslkey", params.sslkey);
  keys[n] = nullptr;
  values[n] = nullptr;
  conn_ = PQconnectStartParams(keys, values, /*expand_dbname=*/0);
  if (conn_ == nullptr) co_return Fail("out of memory allocating a libpq connection", false);
  if (PQstatus(conn_) == CONNECTION_BAD) co_return Fail(FirstLine(PQerrorMessage(conn_)), true);
  // libpq's default notice processor prints to stderr.
  PQsetNoticeProcessor(
      conn_, [](void*, const char*) {}, nullptr);
  ArmDeadline(deadline);
  // Per the libpq docs: start as if PQconnectPoll had returned PGRES_POLLING_WRITING, and look
  // at PQsocket() again before every wait (it can change between calls).
  PostgresPollingStatusType status = PGRES_POLLING_WRITING;
  while (status != PGRES_POLLING_OK) {
    if (status == PGRES_POLLING_FAILED) co_return Fail(FirstLine(PQerrorMessage(conn_)), true);
    if (status == PGRES_POLLING_READING || status == PGRES_POLLING_WRITING) {
      if (!co_await Wait(status == PGRES_POLLING_WRITING)) co_return false;
    }
    status = PQconnectPoll(conn_);
  }
  if (PQsetnonblocking(conn_, 1) != 0) co_return Fail(FirstLine(PQerrorMessage(conn_)), true);
  DisarmDeadline();
  co_return true;
}

asio::awaitable<bool> PgConnection::Query(const char* sql, Clock::time_point deadline,
                                          PgResult* out) {
  out->rows.clear();
  out->command_status.clear();
  timed_out_ = false;
  if (cancelled_) co_return Fail("cancelled", true);
  if (!connected()) co_return Fail("not connected", true);
  if (!PQsendQuery(conn_, sql)) co_return Fail(FirstLine(PQerrorMessage(conn_)), true);
  ArmDeadline(deadline);
  for (;;) {
    const int flushed = PQflush(conn_);
    if (flushed == 0) break;
    if (flushed < 0) co_return Fail(FirstLine(PQerrorMessage(conn_)), true);
    if (!co_await Wait(/*for_write=*/true)) co_return false;
  }
  std::string sql_error;
  for (;;) {
    while (PQisBusy(conn_)) {
      if (!co_await Wait(/*for_write=*/false)) co_return false;
      if (!PQconsumeInput(conn_)) co_return Fail(FirstLine(PQerrorMessage(conn_)), true);
    }
    PGresult* result = PQgetResult(conn_);
    if (result == nullptr) break;
    switch (PQresultStatus(result)) {
      case PGRES_TUPLES_OK: {
        out->rows.clear();
        const int columns = PQnfields(result);
        for (int r = 0; r < PQntuples(result); ++r) {
          ResultRow row;
          row.reserve(columns);
          for (int c = 0; c < columns; ++c) {
            if (PQgetisnull(result, r, c)) {
              row.emplace_back(std::nullopt);
            } else {
              row.emplace_back(std::string(PQgetvalue(result, r, c), PQgetlength(result, r, c)));
            }
          }
          out->rows.push_back(std::move(row));
        }
        out->command_status = PQcmdStatus(result);
        break;
      }
      case PGRES_COMMAND_OK:
      case PGRES_EMPTY_QUERY:
        out->command_status = PQcmdStatus(result);
        break;
      default:
        if (sql_error.empty()) sql_error = FirstLine(PQresultErrorMessage(result));
        break;
    }
    PQclear(result);
  }
  if (PQstatus(conn_) != CONNECTION_OK) {
    co_return Fail(sql_error.empty() ? FirstLine(PQerrorMessage(conn_)) : sql_error, true);
  }
  if (!sql_error.empty()) co_return Fail(std::move(sql_error), false);
  DisarmDeadline();
  co_return true;
}

}  // namespace pgrelay::health
