// EtcdClient against a real single-member etcd (/usr/bin/etcd, Debian package etcd-server) that
// each test starts on free loopback ports with a data directory of its own, and against plain
// sockets that refuse or never answer.
#include "health/etcd_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "health/coordinator.h"
#include "health/etcd_state_store.h"

extern char** environ;

namespace pgrelay::health {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Relation = EtcdCompare::Relation;

constexpr char kEtcdBinary[] = "/usr/bin/etcd";

// A port on 127.0.0.1 that nothing listens on (bound to port 0, read back, closed).
uint16_t FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << "cannot bind a loopback port";
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string Loopback(uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

// Listens on a loopback port: the kernel accepts connections, nobody reads or answers.
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(fd_, 16) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "cannot open a listening socket";
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;

  std::string endpoint() const { return Loopback(port_); }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

// A plain HTTP/1.0 POST to etcd's gateway (the reply ends at EOF), for what EtcdClient does not
// do: users, enabling authentication, compaction.
std::pair<unsigned, std::string> RawPost(const std::string& endpoint, const std::string& target,
                                         const std::string& body, const std::string& token = "") {
  const size_t colon = endpoint.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(endpoint.substr(colon + 1))));
  ::inet_pton(AF_INET, endpoint.substr(0, colon).c_str(), &addr.sin_addr);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return {0, "connect failed"};
  }
  std::string request =
      "POST " + target + " HTTP/1.0\r\nHost: " + endpoint +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\n";
  if (!token.empty()) request += "Authorization: " + token + "\r\n";
  request += "\r\n" + body;
  std::string reply;
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
      static_cast<ssize_t>(request.size())) {
    char buf[4096];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t head_end = reply.find("\r\n\r\n");
  if (!reply.starts_with("HTTP/1.") || reply.size() < 12 || head_end == std::string::npos) {
    return {0, "bad reply: " + reply};
  }
  return {static_cast<unsigned>(std::stoi(reply.substr(9, 3))), reply.substr(head_end + 4)};
}

// One etcd member on loopback ports with a temporary data directory; killed (by PID) and the
// directory removed on destruction.
class EtcdProcess {
 public:
  ~EtcdProcess() {
    Kill();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Starts etcd (first call: new ports and directory; later calls: the same ones, so a restart
  // keeps the data) and waits until it answers. A port picked can be taken by someone else
  // before etcd binds it: the first start then retries with other ports.
  bool Start(std::string* error) {
    const bool first = dir_.empty();
    for (int attempt = 1;; ++attempt) {
      if (StartOnce(error)) return true;
      if (!first || attempt == 3 || error->find("address already in use") == std::string::npos) {
        return false;
      }
      Kill();
      std::filesystem::remove_all(dir_);
      dir_.clear();
    }
  }

  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + 10s;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    pid_ = -1;
  }

  std::string endpoint() const { return Loopback(client_port_); }

  std::string LogTail() const {
    std::ifstream in(dir_ + "/etcd.log");
    std::stringstream s;
    s << in.rdbuf();
    const std::string text = s.str();
    return text.size() > 4000 ? text.substr(text.size() - 4000) : text;
  }

 private:
  bool StartOnce(std::string* error) {
    if (::access(kEtcdBinary, X_OK) != 0) {
      *error = std::string(kEtcdBinary) +
               " not found: install the Debian package etcd-server (scripts/install-deps.sh)";
      return false;
    }
    if (dir_.empty()) {
      char tmpl[] = "/tmp/pgrelay-etcd-test-XXXXXX";
      if (::mkdtemp(tmpl) == nullptr) {
        *error = "mkdtemp failed";
        return false;
      }
      dir_ = tmpl;
      client_port_ = FreePort();
      do {
        peer_port_ = FreePort();
      } while (peer_port_ == client_port_);
    }
    const std::string client_url = "http://" + endpoint();
    const std::string peer_url = "http://" + Loopback(peer_port_);
    std::vector<std::string> args = {kEtcdBinary,
                                     "--name=pgrelay-test",
                                     "--data-dir=" + dir_ + "/data",
                                     "--listen-client-urls=" + client_url,
                                     "--advertise-client-urls=" + client_url,
                                     "--listen-peer-urls=" + peer_url,
                                     "--initial-advertise-peer-urls=" + peer_url,
                                     "--initial-cluster=pgrelay-test=" + peer_url,
                                     "--heartbeat-interval=20",
                                     "--election-timeout=200"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = dir_ + "/etcd.log";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    const int rc = ::posix_spawn(&pid_, kEtcdBinary, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      *error = std::string("posix_spawn etcd: ") + std::strerror(rc);
      return false;
    }
    EtcdOptions options;
    options.endpoints = {endpoint()};
    options.request_timeout = 500ms;
    EtcdClient probe(options);
    const auto deadline = Clock::now() + 30s;
    std::string why;
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        *error = "etcd exited at start-up; its log:\n" + LogTail();
        return false;
      }
      if (probe.Range("ready", &why)) return true;
      std::this_thread::sleep_for(50ms);
    }
    *error = "etcd did not answer within 30 s (" + why + "); its log:\n" + LogTail();
    return false;
  }

  pid_t pid_ = -1;
  std::string dir_;
  uint16_t client_port_ = 0;
  uint16_t peer_port_ = 0;
};

class EtcdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
  }

  EtcdOptions Options(std::chrono::milliseconds timeout = 2000ms) {
    EtcdOptions o;
    o.endpoints = {etcd_.endpoint()};
    o.request_timeout = timeout;
    return o;
  }

  EtcdProcess etcd_;
};

// Collects watch events from another thread.
struct EventSink {
  void Add(const std::vector<EtcdWatchEvent>& batch) {
    std::lock_guard lock(mu);
    events.insert(events.end(), batch.begin(), batch.end());
    cv.notify_all();
  }
  bool WaitFor(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return events.size() >= n; });
  }
  std::vector<EtcdWatchEvent> Get() {
    std::lock_guard lock(mu);
    return events;
  }

  std::mutex mu;
  std::condition_variable cv;
  std::vector<EtcdWatchEvent> events;
};

// Runs a Watch on a thread of its own; stops and joins it at the latest on destruction.
class WatchThread {
 public:
  WatchThread(EtcdClient& client, std::string key, bool prefix, int64_t start_revision,
              EtcdWatchCallback on_events) {
    thread_ = std::thread([this, &client, key, prefix, start_revision, on_events] {
      ok_ = client.Watch(
          key, prefix, start_revision, on_events, [this] { return stop_.load(); }, &end_, &error_);
      returned_ = Clock::now();
    });
  }
  ~WatchThread() { Stop(); }
  WatchThread(const WatchThread&) = delete;
  WatchThread& operator=(const WatchThread&) = delete;

  // Tells the watch to stop, waits for it and returns how long that took.
  Clock::duration Stop() {
    if (!thread_.joinable()) return {};
    const auto asked = Clock::now();
    stop_ = true;
    thread_.join();
    return returned_ - asked;
  }
  // After Stop():
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const EtcdWatchEnd& end() const { return end_; }

 private:
  std::atomic<bool> stop_{false};
  bool ok_ = false;
  std::string error_;
  EtcdWatchEnd end_;
  Clock::time_point returned_;
  std::thread thread_;
};

TEST_F(EtcdClientTest, PutRangeDelete) {
  EtcdClient client(Options());
  std::string error;
  const auto put1 = client.Put("/t/a", "one", 0, &error);
  ASSERT_TRUE(put1) << error;
  EXPECT_GT(put1->revision, 1);

  auto range = client.Range("/t/a", &error);
  ASSERT_TRUE(range) << error;
  EXPECT_EQ(range->revision, put1->revision);
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0], (EtcdKeyValue{"/t/a", "one", put1->revision, put1->revision, 1, 0}));

  const auto put2 = client.Put("/t/a", "two", 0, &error);
  ASSERT_TRUE(put2) << error;
  EXPECT_EQ(put2->revision, put1->revision + 1);
  range = client.Range("/t/a", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0], (EtcdKeyValue{"/t/a", "two", put1->revision, put2->revision, 2, 0}));

  // Keys and values are bytes; an empty value is a value.
  const std::string binary("\0\xff\x01 \n\"x", 7);
  ASSERT_TRUE(client.Put(binary, binary, 0, &error)) << error;
  ASSERT_TRUE(client.Put("/t/empty", "", 0, &error)) << error;
  range = client.Range(binary, &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].key, binary);
  EXPECT_EQ(range->kvs[0].value, binary);
  range = client.Range("/t/empty", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].value, "");
  EXPECT_EQ(range->kvs[0].version, 1);

  range = client.Range("/t/missing", &error);
  ASSERT_TRUE(range) << error;
  EXPECT_TRUE(range->kvs.empty());
  EXPECT_EQ(range->revision, put2->revision + 2);

  const auto deleted = client.Delete("/t/a", &error);
  ASSERT_TRUE(deleted) << error;
  EXPECT_EQ(deleted->deleted, 1);
  EXPECT_EQ(deleted->revision, put2->revision + 3);
  range = client.Range("/t/a", &error);
  ASSERT_TRUE(range) << error;
  EXPECT_TRUE(range->kvs.empty());
  const auto again = client.Delete("/t/a", &error);
  ASSERT_TRUE(again) << error;
  EXPECT_EQ(again->deleted, 0);
  EXPECT_EQ(again->revision, deleted->revision);  // nothing changed
}

TEST_F(EtcdClientTest, RangePrefix) {
  EtcdClient client(Options());
  std::string error;
  for (const char* key : {"/p/b", "/p/a", "/p/c/d", "/p0", "/o", "/p"}) {
    ASSERT_TRUE(client.Put(key, std::string("v") + key, 0, &error)) << error;
  }
  auto range = client.RangePrefix("/p/", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 3u);
  EXPECT_EQ(range->kvs[0].key, "/p/a");
  EXPECT_EQ(range->kvs[1].key, "/p/b");
  EXPECT_EQ(range->kvs[2].key, "/p/c/d");
  EXPECT_EQ(range->kvs[2].value, "v/p/c/d");

  // A prefix ending in 0xff: the range end carries into the byte before it.
  for (const std::string& key :
       {std::string("k\xff"), std::string("k\xff\x01"), std::string("l")}) {
    ASSERT_TRUE(client.Put(key, "x", 0, &error)) << error;
  }
  range = client.RangePrefix("k\xff", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 2u);
  EXPECT_EQ(range->kvs[1].key, "k\xff\x01");

  range = client.RangePrefix("", &error);  // every key
  ASSERT_TRUE(range) << error;
  EXPECT_EQ(range->kvs.size(), 9u);
  range = client.RangePrefix("/nothing/", &error);
  ASSERT_TRUE(range) << error;
  EXPECT_TRUE(range->kvs.empty());
}

TEST_F(EtcdClientTest, TxnCreateIfAbsentSucceedsOnlyOnce) {
  EtcdClient client(Options());
  std::string error;
  auto claim = [](const std::string& who) {
    EtcdTxn txn;
    txn.compare = {EtcdCompare::CreateRevision("/coord/leader", Relation::kEqual, 0)};
    txn.success = {EtcdOp::Put("/coord/leader", who)};
    txn.failure = {EtcdOp::Range("/coord/leader")};
    return txn;
  };
  const auto first = client.Txn(claim("node-a"), &error);
  ASSERT_TRUE(first) << error;
  EXPECT_TRUE(first->succeeded);
  ASSERT_EQ(first->responses.size(), 1u);
  EXPECT_EQ(first->responses[0].type, EtcdOp::Type::kPut);

  const auto second = client.Txn(claim("node-b"), &error);
  ASSERT_TRUE(second) << error;
  EXPECT_FALSE(second->succeeded);
  EXPECT_EQ(second->revision, first->revision);  // nothing written
  ASSERT_EQ(second->responses.size(), 1u);
  EXPECT_EQ(second->responses[0].type, EtcdOp::Type::kRange);
  ASSERT_EQ(second->responses[0].kvs.size(), 1u);
  EXPECT_EQ(second->responses[0].kvs[0].value, "node-a");
  EXPECT_EQ(second->responses[0].kvs[0].create_revision, first->revision);

  const auto range = client.Range("/coord/leader", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].value, "node-a");
}

TEST_F(EtcdClientTest, TxnCompareAndSwap) {
  EtcdClient client(Options());
  std::string error;
  const auto put = client.Put("/coord/epoch", "1", 0, &error);
  ASSERT_TRUE(put) << error;

  auto swap = [](int64_t expected_mod, const std::string& value) {
    EtcdTxn txn;
    txn.compare = {EtcdCompare::ModRevision("/coord/epoch", Relation::kEqual, expected_mod)};
    txn.success = {EtcdOp::Put("/coord/epoch", value)};
    txn.failure = {EtcdOp::Range("/coord/epoch")};
    return txn;
  };
  const auto swapped = client.Txn(swap(put->revision, "2"), &error);
  ASSERT_TRUE(swapped) << error;
  EXPECT_TRUE(swapped->succeeded);
  EXPECT_EQ(swapped->revision, put->revision + 1);

  const auto stale = client.Txn(swap(put->revision, "3"), &error);  // the revision read before
  ASSERT_TRUE(stale) << error;
  EXPECT_FALSE(stale->succeeded);
  ASSERT_EQ(stale->responses.size(), 1u);
  ASSERT_EQ(stale->responses[0].kvs.size(), 1u);
  EXPECT_EQ(stale->responses[0].kvs[0].value, "2");
  EXPECT_EQ(stale->responses[0].kvs[0].mod_revision, swapped->revision);
  auto range = client.Range("/coord/epoch", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].value, "2");

  // VALUE, VERSION, GREATER: all must hold; the success branch runs several operations.
  ASSERT_TRUE(client.Put("/coord/x/1", "a", 0, &error)) << error;
  ASSERT_TRUE(client.Put("/coord/x/2", "b", 0, &error)) << error;
  EtcdTxn multi;
  multi.compare = {EtcdCompare::Value("/coord/epoch", Relation::kEqual, "2"),
                   EtcdCompare::Version("/coord/epoch", Relation::kGreater, 1)};
  multi.success = {EtcdOp::RangePrefix("/coord/x/"), EtcdOp::DeletePrefix("/coord/x/"),
                   EtcdOp::Delete("/coord/epoch")};
  const auto ran = client.Txn(multi, &error);
  ASSERT_TRUE(ran) << error;
  EXPECT_TRUE(ran->succeeded);
  ASSERT_EQ(ran->responses.size(), 3u);
  EXPECT_EQ(ran->responses[0].type, EtcdOp::Type::kRange);
  EXPECT_EQ(ran->responses[0].kvs.size(), 2u);
  EXPECT_EQ(ran->responses[1].type, EtcdOp::Type::kDelete);
  EXPECT_EQ(ran->responses[1].deleted, 2);
  EXPECT_EQ(ran->responses[2].deleted, 1);

  // The key is gone: create_revision 0, so NOT_EQUAL 0 fails; LESS on a live key's revision.
  ASSERT_TRUE(client.Put("/coord/y", "y", 0, &error)) << error;
  EtcdTxn absent;
  absent.compare = {EtcdCompare::CreateRevision("/coord/epoch", Relation::kNotEqual, 0)};
  absent.success = {EtcdOp::Put("/coord/z", "never")};
  const auto not_taken = client.Txn(absent, &error);
  ASSERT_TRUE(not_taken) << error;
  EXPECT_FALSE(not_taken->succeeded);
  EXPECT_TRUE(not_taken->responses.empty());
  EtcdTxn less;
  less.compare = {EtcdCompare::ModRevision("/coord/y", Relation::kLess, 1000000)};
  const auto taken = client.Txn(less, &error);
  ASSERT_TRUE(taken) << error;
  EXPECT_TRUE(taken->succeeded);
  range = client.Range("/coord/z", &error);
  ASSERT_TRUE(range) << error;
  EXPECT_TRUE(range->kvs.empty());
}

TEST_F(EtcdClientTest, LeaseGrantKeepAliveRevoke) {
  EtcdClient client(Options());
  std::string error;
  const auto lease = client.LeaseGrant(60, &error);
  ASSERT_TRUE(lease) << error;
  EXPECT_NE(lease->id, 0);
  EXPECT_EQ(lease->ttl, 60);

  ASSERT_TRUE(client.Put("/coord/owner", "node-a", lease->id, &error)) << error;
  auto range = client.Range("/coord/owner", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].lease, lease->id);

  const auto ttl = client.LeaseKeepAliveOnce(lease->id, &error);
  ASSERT_TRUE(ttl) << error;
  EXPECT_GT(*ttl, 0);
  EXPECT_LE(*ttl, 60);

  ASSERT_TRUE(client.LeaseRevoke(lease->id, &error)) << error;
  range = client.Range("/coord/owner", &error);
  ASSERT_TRUE(range) << error;
  EXPECT_TRUE(range->kvs.empty());  // deleted with its lease

  const auto gone = client.LeaseKeepAliveOnce(lease->id, &error);
  ASSERT_TRUE(gone) << error;
  EXPECT_EQ(*gone, 0);
  EXPECT_TRUE(client.LeaseRevoke(lease->id, &error)) << error;  // already gone: fine

  EXPECT_FALSE(client.Put("/coord/owner", "node-b", lease->id, &error));
  EXPECT_NE(error.find("lease not found"), std::string::npos) << error;
}

TEST_F(EtcdClientTest, WatchDeliversPutAndDeleteFromAnotherClient) {
  EtcdClient writer(Options());
  EtcdClient watcher(Options());
  std::string error;
  const auto before = writer.Range("/w/", &error);
  ASSERT_TRUE(before) << error;

  EventSink sink;
  WatchThread watch(watcher, "/w/", true, before->revision + 1,
                    [&](const auto& events) { sink.Add(events); });
  const auto put = writer.Put("/w/a", "v1", 0, &error);
  ASSERT_TRUE(put) << error;
  ASSERT_TRUE(writer.Put("/elsewhere", "x", 0, &error)) << error;
  const auto deleted = writer.Delete("/w/a", &error);
  ASSERT_TRUE(deleted) << error;

  const bool arrived = sink.WaitFor(2, 10s);
  std::this_thread::sleep_for(300ms);  // nothing else may arrive
  const auto stop_took = watch.Stop();
  ASSERT_TRUE(arrived) << "watch events did not arrive: " << watch.error();
  EXPECT_TRUE(watch.ok()) << watch.error();
  EXPECT_LT(stop_took, 500ms);

  const auto events = sink.Get();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, EtcdWatchEvent::Type::kPut);
  EXPECT_EQ(events[0].kv, (EtcdKeyValue{"/w/a", "v1", put->revision, put->revision, 1, 0}));
  EXPECT_EQ(events[1].type, EtcdWatchEvent::Type::kDelete);
  EXPECT_EQ(events[1].kv.key, "/w/a");
  EXPECT_EQ(events[1].kv.mod_revision, deleted->revision);
  EXPECT_EQ(watch.end().resume_revision, deleted->revision + 1);
  EXPECT_FALSE(watch.end().canceled);
}

TEST_F(EtcdClientTest, WatchStopsPromptlyWhileIdleAndCallbackMayUseTheClient) {
  EtcdClient client(Options());
  EtcdClient writer(Options());
  std::string error;
  ASSERT_TRUE(writer.Put("/idle/seed", "0", 0, &error)) << error;

  std::atomic<int> batches{0};
  std::string read_back;
  WatchThread watch(client, "/idle/key", false, 0, [&](const std::vector<EtcdWatchEvent>&) {
    std::string e;
    const auto r = client.Range("/idle/key", &e);  // the same client, inside the callback
    read_back = r && !r->kvs.empty() ? r->kvs[0].value : "failed: " + e;
    ++batches;
  });
  // From revision 0 the watch starts after the current revision: let it be set up first.
  std::this_thread::sleep_for(500ms);
  const auto put = writer.Put("/idle/key", "hello", 0, &error);
  ASSERT_TRUE(put) << error;
  for (int i = 0; i < 100 && batches == 0; ++i) std::this_thread::sleep_for(50ms);
  std::this_thread::sleep_for(700ms);  // idle
  const auto stop_took = watch.Stop();
  EXPECT_TRUE(watch.ok()) << watch.error();
  EXPECT_EQ(batches, 1);
  EXPECT_EQ(read_back, "hello");
  EXPECT_LT(stop_took, 500ms);
  EXPECT_EQ(watch.end().resume_revision, put->revision + 1);
}

TEST_F(EtcdClientTest, WatchReturnsAnErrorWhenEtcdGoesAway) {
  EtcdClient client(Options());
  std::string error;
  const auto put = client.Put("/gone/k", "v", 0, &error);
  ASSERT_TRUE(put) << error;
  EventSink sink;
  std::atomic<bool> returned{false};
  std::atomic<bool> give_up{false};
  bool watch_ok = true;
  std::string watch_error;
  std::thread thread([&] {
    watch_ok = client.Watch(
        "/gone/", true, put->revision, [&](const auto& events) { sink.Add(events); },
        [&] { return give_up.load(); }, nullptr, &watch_error);
    returned = true;
  });
  const bool arrived = sink.WaitFor(1, 10s);  // the watch is set up
  etcd_.Kill();
  const auto killed = Clock::now();
  for (int i = 0; i < 100 && !returned; ++i) std::this_thread::sleep_for(50ms);
  const auto took = Clock::now() - killed;
  give_up = true;
  thread.join();
  EXPECT_TRUE(arrived);
  EXPECT_LT(took, 2s);
  EXPECT_FALSE(watch_ok);
  EXPECT_NE(watch_error.find("etcd watch on prefix '/gone/'"), std::string::npos) << watch_error;
}

TEST_F(EtcdClientTest, WatchReportsACompactedStartRevision) {
  EtcdClient client(Options());
  std::string error;
  const auto first = client.Put("/c/k", "1", 0, &error);
  ASSERT_TRUE(first) << error;
  ASSERT_TRUE(client.Put("/c/k", "2", 0, &error)) << error;
  const auto last = client.Put("/c/k", "3", 0, &error);
  ASSERT_TRUE(last) << error;
  const auto [status, body] =
      RawPost(etcd_.endpoint(), "/v3/kv/compaction",
              "{\"revision\":\"" + std::to_string(last->revision) + "\",\"physical\":true}");
  ASSERT_EQ(status, 200u) << body;

  int calls = 0;
  EtcdWatchEnd end;
  const auto t0 = Clock::now();
  EXPECT_FALSE(client.Watch(
      "/c/k", false, first->revision, [&](const auto&) { ++calls; }, [] { return false; }, &end,
      &error));
  EXPECT_LT(Clock::now() - t0, 2s);
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(end.canceled);
  EXPECT_EQ(end.compact_revision, last->revision);
  EXPECT_NE(error.find("compacted"), std::string::npos) << error;

  // Watching from the compaction revision on works and delivers the history kept.
  std::vector<EtcdWatchEvent> events;
  EXPECT_TRUE(client.Watch(
      "/c/k", false, end.compact_revision,
      [&](const auto& batch) { events.insert(events.end(), batch.begin(), batch.end()); },
      [&] { return !events.empty(); }, &end, &error))
      << error;
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kv.value, "3");
}

TEST_F(EtcdClientTest, FailsOverFromAClosedPort) {
  EtcdOptions options = Options();
  const std::string dead = Loopback(FreePort());
  options.endpoints = {dead, etcd_.endpoint()};
  EtcdClient client(options);
  EXPECT_EQ(client.CurrentEndpoint(), dead);
  std::string error;
  ASSERT_TRUE(client.Put("/f/k", "v", 0, &error)) << error;
  EXPECT_EQ(client.CurrentEndpoint(), etcd_.endpoint());
  const auto range = client.Range("/f/k", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].value, "v");

  // A watch fails over the same way.
  EtcdClient watcher(options);
  std::vector<EtcdWatchEvent> events;
  EXPECT_TRUE(watcher.Watch(
      "/f/k", false, range->kvs[0].mod_revision,
      [&](const auto& batch) { events.insert(events.end(), batch.begin(), batch.end()); },
      [&] { return !events.empty(); }, nullptr, &error))
      << error;
  ASSERT_EQ(events.size(), 1u);
}

TEST_F(EtcdClientTest, FailsOverPastAnEndpointThatNeverAnswersWithinTheTimeout) {
  SilentListener silent;
  EtcdOptions options = Options(1000ms);
  options.endpoints = {silent.endpoint(), etcd_.endpoint()};
  EtcdClient client(options);
  std::string error;
  const auto t0 = Clock::now();
  ASSERT_TRUE(client.Put("/f/k", "v", 0, &error)) << error;
  const auto elapsed = Clock::now() - t0;
  EXPECT_GE(elapsed, 400ms);  // half of the timeout went to the silent endpoint
  EXPECT_LT(elapsed, 1000ms);
  EXPECT_EQ(client.CurrentEndpoint(), etcd_.endpoint());
}

TEST_F(EtcdClientTest, ReconnectsAfterTheServerClosedAKeptAliveConnection) {
  EtcdClient client(Options());
  std::string error;
  ASSERT_TRUE(client.Put("/r/k", "before", 0, &error)) << error;
  etcd_.Kill();
  ASSERT_TRUE(etcd_.Start(&error)) << error;  // same ports and data
  const auto range = client.Range("/r/k", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].value, "before");
}

TEST_F(EtcdClientTest, AuthenticatesAndReauthenticatesWhenTheTokenIsInvalidated) {
  const std::string ep = etcd_.endpoint();
  const std::string password = "pw-Secret-4711";
  ASSERT_EQ(
      RawPost(ep, "/v3/auth/user/add", "{\"name\":\"root\",\"password\":\"" + password + "\"}")
          .first,
      200u);
  ASSERT_EQ(RawPost(ep, "/v3/auth/user/grant", R"({"user":"root","role":"root"})").first, 200u);
  ASSERT_EQ(RawPost(ep, "/v3/auth/enable", "{}").first, 200u);
  auto invalidate_tokens = [&] {  // disabling auth drops every token
    const auto [status, body] = RawPost(ep, "/v3/auth/authenticate",
                                        "{\"name\":\"root\",\"password\":\"" + password + "\"}");
    ASSERT_EQ(status, 200u) << body;
    const size_t at = body.find("\"token\":\"");
    ASSERT_NE(at, std::string::npos) << body;
    const std::string token = body.substr(at + 9, body.find('"', at + 9) - (at + 9));
    ASSERT_EQ(RawPost(ep, "/v3/auth/disable", "{}", token).first, 200u);
    ASSERT_EQ(RawPost(ep, "/v3/auth/enable", "{}").first, 200u);
  };
  std::string error;

  EtcdClient anonymous(Options());
  EXPECT_FALSE(anonymous.Range("/a/k", &error));
  EXPECT_NE(error.find("user name is empty"), std::string::npos) << error;

  EtcdOptions wrong_options = Options();
  wrong_options.username = "root";
  wrong_options.password = "wrong-Secret-0815";
  EtcdClient wrong(wrong_options);
  EXPECT_FALSE(wrong.Put("/a/k", "v", 0, &error));
  EXPECT_NE(error.find("authentication as user 'root'"), std::string::npos) << error;
  EXPECT_NE(error.find("invalid user ID or password"), std::string::npos) << error;
  EXPECT_EQ(error.find(wrong_options.password), std::string::npos) << error;
  EXPECT_EQ(error.find(password), std::string::npos) << error;

  EtcdOptions options = Options();
  options.username = "root";
  options.password = password;
  EtcdClient client(options);
  EtcdClient watcher(options);
  const auto put = client.Put("/a/k", "v1", 0, &error);
  ASSERT_TRUE(put) << error;
  ASSERT_TRUE(watcher.Range("/a/k", &error)) << error;  // has a token now

  invalidate_tokens();
  const auto range = client.Range("/a/k", &error);
  ASSERT_TRUE(range) << error;
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].value, "v1");

  // A watch whose token was dropped is canceled by etcd; the client logs in again and resumes.
  invalidate_tokens();
  std::vector<EtcdWatchEvent> events;
  const auto put2 = client.Put("/a/k", "v2", 0, &error);
  ASSERT_TRUE(put2) << error;
  EtcdWatchEnd end;
  EXPECT_TRUE(watcher.Watch(
      "/a/k", false, put->revision,
      [&](const auto& batch) { events.insert(events.end(), batch.begin(), batch.end()); },
      [&] { return events.size() >= 2; }, &end, &error))
      << error;
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kv.value, "v1");
  EXPECT_EQ(events[1].kv.value, "v2");
  EXPECT_EQ(end.resume_revision, put2->revision + 1);
}

// No etcd needed: endpoints that refuse, never answer or cannot be parsed.

TEST(EtcdClientNoServerTest, DeadEndpointsFailWithinTheTimeoutNamingEach) {
  const std::string dead1 = Loopback(FreePort());
  const std::string dead2 = Loopback(FreePort());
  EtcdOptions options;
  options.endpoints = {dead1, dead2};
  options.request_timeout = 1000ms;
  EtcdClient client(options);
  std::string error;
  const auto t0 = Clock::now();
  EXPECT_FALSE(client.Range("/k", &error));
  EXPECT_LT(Clock::now() - t0, 1200ms);
  EXPECT_NE(error.find(dead1 + ": connect: Connection refused"), std::string::npos) << error;
  EXPECT_NE(error.find(dead2 + ": connect: Connection refused"), std::string::npos) << error;
  EXPECT_NE(error.find("/v3/kv/range"), std::string::npos) << error;

  EXPECT_FALSE(client.Watch(
      "/k", false, 0, [](const auto&) {}, [] { return false; }, nullptr, &error));
  EXPECT_NE(error.find(dead1), std::string::npos) << error;
  EXPECT_NE(error.find(dead2), std::string::npos) << error;
}

TEST(EtcdClientNoServerTest, AListenerThatNeverAnswersTimesOut) {
  SilentListener silent;
  EtcdOptions options;
  options.endpoints = {silent.endpoint()};
  options.request_timeout = 500ms;
  EtcdClient client(options);
  std::string error;
  auto t0 = Clock::now();
  EXPECT_FALSE(client.Put("/k", "v", 0, &error));
  auto elapsed = Clock::now() - t0;
  EXPECT_GE(elapsed, 450ms);
  EXPECT_LT(elapsed, 900ms);
  EXPECT_NE(error.find(silent.endpoint() + ": read: timed out after"), std::string::npos) << error;

  // Two silent endpoints share the timeout; the call still ends within it.
  SilentListener silent2;
  options.endpoints = {silent.endpoint(), silent2.endpoint()};
  EtcdClient client2(options);
  t0 = Clock::now();
  EXPECT_FALSE(client2.LeaseGrant(10, &error));
  elapsed = Clock::now() - t0;
  EXPECT_GE(elapsed, 450ms);
  EXPECT_LT(elapsed, 900ms);
  EXPECT_NE(error.find(silent.endpoint() + ": read: timed out"), std::string::npos) << error;
  EXPECT_NE(error.find(silent2.endpoint() + ": read: timed out"), std::string::npos) << error;

  // Establishing a watch is bounded the same way.
  t0 = Clock::now();
  EXPECT_FALSE(client.Watch(
      "/k", true, 0, [](const auto&) {}, [] { return false; }, nullptr, &error));
  EXPECT_LT(Clock::now() - t0, 900ms);
  EXPECT_NE(error.find("timed out"), std::string::npos) << error;
}

TEST(EtcdClientNoServerTest, BadOrNoEndpoints) {
  EtcdOptions options;
  options.endpoints = {"no-port", "https://127.0.0.1:2379"};
  EtcdClient client(options);
  std::string error;
  EXPECT_FALSE(client.Range("/k", &error));
  EXPECT_NE(error.find("no-port: bad endpoint"), std::string::npos) << error;
  EXPECT_NE(error.find("https is not supported"), std::string::npos) << error;

  EtcdClient none{EtcdOptions{}};
  EXPECT_FALSE(none.Delete("/k", &error));
  EXPECT_NE(error.find("no endpoints configured"), std::string::npos) << error;
  EXPECT_EQ(none.CurrentEndpoint(), "");
}

TEST(EtcdEndpointTest, Parse) {
  std::string host, port, error;
  ASSERT_TRUE(ParseEtcdEndpoint("127.0.0.1:2379", &host, &port, &error)) << error;
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, "2379");
  ASSERT_TRUE(ParseEtcdEndpoint("http://etcd-1.example:12379/", &host, &port, &error)) << error;
  EXPECT_EQ(host, "etcd-1.example");
  EXPECT_EQ(port, "12379");
  ASSERT_TRUE(ParseEtcdEndpoint("[::1]:2379", &host, &port, &error)) << error;
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, "2379");
  for (const char* bad : {"", "host", "host:", ":2379", "host:0", "host:65536", "host:12x",
                          "::1:2379", "[::1]2379", "https://host:2379"}) {
    EXPECT_FALSE(ParseEtcdEndpoint(bad, &host, &port, &error)) << bad;
  }
}

TEST(EtcdEndpointTest, PrefixEnd) {
  EXPECT_EQ(EtcdPrefixEnd("/pgrelay/"), "/pgrelay0");
  EXPECT_EQ(EtcdPrefixEnd("a"), "b");
  EXPECT_EQ(EtcdPrefixEnd("a\xff"), "b");
  EXPECT_EQ(EtcdPrefixEnd("a\xfe"), "a\xff");
  EXPECT_EQ(EtcdPrefixEnd("\xff\xff"), std::string(1, '\0'));
  EXPECT_EQ(EtcdPrefixEnd(""), std::string(1, '\0'));
}

config::EtcdConfig StoreConfig(const std::string& endpoint, const std::string& prefix) {
  config::EtcdConfig c;
  const size_t colon = endpoint.rfind(':');
  c.endpoints.push_back(config::Endpoint{
      endpoint.substr(0, colon), static_cast<uint16_t>(std::stoi(endpoint.substr(colon + 1)))});
  c.prefix = prefix;
  c.timeout = 2000ms;
  return c;
}

// Two pgrelays share the failover record: both read epoch 1 and both try to record epoch 2 with
// a different primary; exactly one write lands, the other learns the winner, and the record in
// etcd was changed exactly once.
TEST_F(EtcdClientTest, StateStoreCompareAndSwapLetsOneOfTwoRacingWritersWin) {
  EtcdStateStore a(StoreConfig(etcd_.endpoint(), "/pgrelay/test"));
  EtcdStateStore b(StoreConfig(etcd_.endpoint(), "/pgrelay/test"));
  std::string error;
  std::optional<ClusterRecord> loaded;
  ASSERT_TRUE(a.Load(&loaded, &error)) << error;
  EXPECT_FALSE(loaded.has_value()) << "no record yet";

  // Both record the first primary; only the first to write succeeds (create-if-absent).
  ASSERT_TRUE(b.Load(&loaded, &error)) << error;
  ASSERT_TRUE(a.Store(ClusterRecord{1, "pg1", 1}, &error)) << error;
  EXPECT_FALSE(b.Store(ClusterRecord{1, "pg1", 1}, &error));
  EXPECT_NE(error.find("primary pg1 at epoch 1"), std::string::npos) << error;
  ASSERT_TRUE(b.last_seen().has_value());
  EXPECT_EQ(*b.last_seen(), (ClusterRecord{1, "pg1", 1}));

  // Both now know epoch 1; both race for epoch 2 with different candidates.
  ASSERT_TRUE(a.Load(&loaded, &error)) << error;
  ASSERT_TRUE(b.Load(&loaded, &error)) << error;
  ASSERT_EQ(loaded, (ClusterRecord{1, "pg1", 1}));
  const bool a_won = a.Store(ClusterRecord{2, "pg2", 2}, &error);
  const bool b_won = b.Store(ClusterRecord{2, "pg3", 2}, &error);
  EXPECT_TRUE(a_won);
  EXPECT_FALSE(b_won) << "two writers recorded epoch 2";
  EXPECT_NE(error.find("another pgrelay changed the failover record first: primary pg2 at epoch 2"),
            std::string::npos)
      << error;
  EXPECT_EQ(*b.last_seen(), (ClusterRecord{2, "pg2", 2}));

  // etcd's own history: the key was written twice (epoch 1 once, epoch 2 once).
  EtcdClient client(Options());
  auto r = client.Range(EtcdStateStore::RecordKey("/pgrelay/test"), &error);
  ASSERT_TRUE(r.has_value()) << error;
  ASSERT_EQ(r->kvs.size(), 1u);
  EXPECT_EQ(r->kvs[0].version, 2) << "the record was written exactly twice";
  EXPECT_EQ(ParseRecord(r->kvs[0].value), (ClusterRecord{2, "pg2", 2}));

  // The loser, now up to date, can record the next change.
  EXPECT_TRUE(b.Store(ClusterRecord{3, "pg3", 3}, &error)) << error;
  ASSERT_TRUE(a.Load(&loaded, &error)) << error;
  EXPECT_EQ(loaded, (ClusterRecord{3, "pg3", 3}));
}

TEST_F(EtcdClientTest, StateStoreReportsAnUnreadableRecordAndUnreachableEtcd) {
  EtcdClient client(Options());
  std::string error;
  ASSERT_TRUE(client.Put(EtcdStateStore::RecordKey("/pgrelay/bad"), "garbage", 0, &error)) << error;
  EtcdStateStore bad(StoreConfig(etcd_.endpoint(), "/pgrelay/bad"));
  std::optional<ClusterRecord> loaded;
  EXPECT_FALSE(bad.Load(&loaded, &error));
  EXPECT_NE(error.find("is not a valid record"), std::string::npos) << error;

  EtcdStateStore gone(StoreConfig("127.0.0.1:" + std::to_string(FreePort()), "/pgrelay/x"));
  EXPECT_FALSE(gone.Load(&loaded, &error));
  EXPECT_NE(error.find("cannot read the failover record /pgrelay/x/record from etcd"),
            std::string::npos)
      << error;
  EXPECT_FALSE(gone.Store(ClusterRecord{1, "pg1", 1}, &error));
}

// --- Coordinator: membership and election -------------------------------------------------

config::EtcdConfig CoordinationConfig(const std::string& endpoint, const std::string& prefix) {
  config::EtcdConfig c = StoreConfig(endpoint, prefix);
  c.lease_ttl = std::chrono::seconds(2);
  c.timeout = 500ms;
  return c;
}

std::unique_ptr<Coordinator> StartCoordinator(const std::string& endpoint,
                                              const std::string& prefix,
                                              const std::string& member) {
  auto c = std::make_unique<Coordinator>(CoordinationConfig(endpoint, prefix), member, 100ms,
                                         [member] { return "view of " + member; });
  c->Start();
  return c;
}

// The coordinators among `all` that act as coordinator now.
std::vector<std::string> Acting(const std::vector<Coordinator*>& all) {
  std::vector<std::string> names;
  for (Coordinator* c : all) {
    if (c->IsCoordinator()) names.push_back(c->Snapshot().member);
  }
  return names;
}

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return condition();
}

TEST_F(EtcdClientTest, CoordinatorElectionNeverHasTwoCoordinatorsAndListsTheMembers) {
  auto a = StartCoordinator(etcd_.endpoint(), "/pgrelay/elect", "relay-a");
  auto b = StartCoordinator(etcd_.endpoint(), "/pgrelay/elect", "relay-b");
  auto c = StartCoordinator(etcd_.endpoint(), "/pgrelay/elect", "relay-c");
  const std::vector<Coordinator*> all{a.get(), b.get(), c.get()};
  ASSERT_TRUE(WaitFor([&] { return Acting(all).size() == 1; }, 5s)) << "no coordinator elected";
  // Sampled for 2 s (several lease renewals): always exactly one, always the same.
  const std::string first = Acting(all).front();
  for (int i = 0; i < 100; ++i) {
    const std::vector<std::string> acting = Acting(all);
    ASSERT_LE(acting.size(), 1u) << "two coordinators at once";
    if (!acting.empty()) {
      EXPECT_EQ(acting.front(), first);
    }
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        for (Coordinator* x : all) {
          const Coordinator::Status s = x->Snapshot();
          if (s.holder != first || s.members.size() != 3 || !s.etcd_reachable) return false;
        }
        return true;
      },
      3s));
  const Coordinator::Status s = b->Snapshot();
  EXPECT_EQ(s.members.at("relay-a"), "view of relay-a");
  EXPECT_EQ(s.members.at("relay-c"), "view of relay-c");
}

TEST_F(EtcdClientTest, CrashedCoordinatorIsReplacedAfterItsLeaseCouldHaveExpired) {
  auto a = StartCoordinator(etcd_.endpoint(), "/pgrelay/crash", "relay-a");
  ASSERT_TRUE(WaitFor([&] { return a->IsCoordinator(); }, 5s));
  auto b = StartCoordinator(etcd_.endpoint(), "/pgrelay/crash", "relay-b");
  ASSERT_TRUE(WaitFor([&] { return b->Snapshot().holder == "relay-a"; }, 5s));
  EXPECT_FALSE(b->IsCoordinator());

  // A crash: the thread stops, the lease is not revoked.
  const auto crashed = Clock::now();
  a->Stop(/*release=*/false);
  ASSERT_TRUE(WaitFor([&] { return b->IsCoordinator(); }, 6s)) << "no takeover";
  const auto took = Clock::now() - crashed;
  // Not before relay-a's lease could have run out (renewed at most TTL/3 before the crash), and
  // within the TTL plus a round of b's.
  EXPECT_GE(took, 2s * 2 / 3 - 100ms);
  EXPECT_LE(took, 2s + 1500ms);
  EXPECT_EQ(b->Snapshot().holder, "relay-b");
}

TEST_F(EtcdClientTest, CleanStopHandsTheRoleOverAtOnceAndEtcdLossStopsActing) {
  auto a = StartCoordinator(etcd_.endpoint(), "/pgrelay/handover", "relay-a");
  ASSERT_TRUE(WaitFor([&] { return a->IsCoordinator(); }, 5s));
  auto b = StartCoordinator(etcd_.endpoint(), "/pgrelay/handover", "relay-b");
  ASSERT_TRUE(WaitFor([&] { return b->Snapshot().members.size() == 2; }, 5s));
  const auto stopped = Clock::now();
  a->Stop(/*release=*/true);  // revokes the lease: the key goes at once
  ASSERT_TRUE(WaitFor([&] { return b->IsCoordinator(); }, 3s));
  EXPECT_LT(Clock::now() - stopped, 1s) << "a released role should not wait for the lease TTL";

  // etcd goes away: b stops acting as coordinator before its lease could expire (TTL 2 s).
  const auto lost = Clock::now();
  etcd_.Kill();
  ASSERT_TRUE(WaitFor([&] { return !b->IsCoordinator(); }, 3s));
  EXPECT_LT(Clock::now() - lost, 2s);
  EXPECT_FALSE(b->Snapshot().etcd_reachable);
}

}  // namespace
}  // namespace pgrelay::health
