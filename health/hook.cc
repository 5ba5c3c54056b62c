#include "health/hook.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>

extern char** environ;

namespace pgrelay::health {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr size_t kMaxOutput = 64 * 1024;

std::string ShellQuote(std::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

std::string ExpandHook(std::string_view command, const HookValues& values) {
  std::string out;
  for (size_t i = 0; i < command.size(); ++i) {
    if (command[i] == '{') {
      const size_t end = command.find('}', i);
      if (end != std::string_view::npos) {
        const std::string_view name = command.substr(i + 1, end - i - 1);
        bool replaced = false;
        for (const auto& [key, value] : values) {
          if (key == name) {
            out += ShellQuote(value);
            replaced = true;
            break;
          }
        }
        if (replaced) {
          i = end;
          continue;
        }
      }
    }
    out += command[i];
  }
  return out;
}

asio::awaitable<HookResult> RunHook(const asio::any_io_executor& executor,
                                    const std::string& command,
                                    std::chrono::milliseconds timeout) {
  HookResult result;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    result.error = std::string("pipe: ") + std::strerror(errno);
    co_return result;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setpgroup(&attr, 0);  // its own group: a timeout kills its children too
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);
  std::string sh = "/bin/sh", dash_c = "-c", cmd = command;
  char* argv[] = {sh.data(), dash_c.data(), cmd.data(), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/bin/sh", &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    result.error = std::string("cannot start /bin/sh: ") + std::strerror(rc);
    co_return result;
  }
  const Clock::time_point deadline = Clock::now() + timeout;
  asio::posix::stream_descriptor out(executor, fds[0]);
  asio::steady_timer timer(executor);
  char buf[4096];
  for (;;) {
    using namespace asio::experimental::awaitable_operators;
    timer.expires_at(deadline);
    auto r = co_await (out.async_read_some(asio::buffer(buf), kNoThrow) ||
                       timer.async_wait(kNoThrow));
    if (r.index() == 1) {
      result.timed_out = true;
      break;
    }
    auto [ec, n] = std::get<0>(r);
    if (ec) break;  // EOF: the command (and whatever inherited its output) is done writing
    if (result.output.size() < kMaxOutput) {
      result.output.append(buf, std::min(n, kMaxOutput - result.output.size()));
    }
  }
  int status = 0;
  for (;;) {
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (result.timed_out || Clock::now() >= deadline) {
      result.timed_out = true;
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(kNoThrow);
  }
  if (!result.timed_out && WIFEXITED(status)) result.exit_status = WEXITSTATUS(status);
  result.ok = result.exit_status == 0;
  co_return result;
}

}  // namespace pgrelay::health
