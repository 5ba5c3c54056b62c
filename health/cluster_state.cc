#include "health/cluster_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

namespace pgrelay::health {

namespace {

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

template <typename T>
bool ParseNumber(const std::string& s, T* out) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

std::string FormatRecord(const ClusterRecord& r) {
  return "epoch=" + std::to_string(r.epoch) + "\nprimary=" + r.primary +
         "\ntimeline=" + std::to_string(r.timeline) + "\n";
}

std::optional<ClusterRecord> ParseRecord(const std::string& text) {
  ClusterRecord r;
  bool epoch = false, primary = false, timeline = false;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos) return std::nullopt;
    const std::string key = line.substr(0, eq);
    const std::string value = line.substr(eq + 1);
    if (key == "epoch") {
      if (!ParseNumber(value, &r.epoch)) return std::nullopt;
      epoch = true;
    } else if (key == "primary") {
      if (value.empty()) return std::nullopt;
      r.primary = value;
      primary = true;
    } else if (key == "timeline") {
      if (!ParseNumber(value, &r.timeline)) return std::nullopt;
      timeline = true;
    } else {
      return std::nullopt;
    }
  }
  if (!epoch || !primary || !timeline) return std::nullopt;
  return r;
}

bool MemoryStateStore::Load(std::optional<ClusterRecord>* out, std::string*) {
  *out = record_;
  return true;
}

bool MemoryStateStore::Store(const ClusterRecord& record, std::string*) {
  record_ = record;
  return true;
}

bool LocalStateStore::Load(std::optional<ClusterRecord>* out, std::string* error) {
  out->reset();
  std::ifstream in(path_, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return true;  // no record yet
    *error = Errno("cannot read " + path_);
    return false;
  }
  std::ostringstream text;
  text << in.rdbuf();
  *out = ParseRecord(text.str());
  if (!*out) {
    *error = path_ + " is not a valid pgrelay state file (expected epoch=, primary=, timeline=)";
    return false;
  }
  return true;
}

bool LocalStateStore::Store(const ClusterRecord& record, std::string* error) {
  const std::string tmp = path_ + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    *error = Errno("cannot create " + tmp);
    return false;
  }
  const bool written = WriteAll(fd, FormatRecord(record)) && ::fsync(fd) == 0;
  const int saved = errno;
  ::close(fd);
  if (!written) {
    errno = saved;
    *error = Errno("cannot write " + tmp);
    ::unlink(tmp.c_str());
    return false;
  }
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    *error = Errno("cannot rename " + tmp + " to " + path_);
    ::unlink(tmp.c_str());
    return false;
  }
  // The rename itself must survive a crash: fsync the directory.
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path_.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

}  // namespace pgrelay::health
