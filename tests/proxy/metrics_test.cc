#include "proxy/admin/metrics.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "config/config_loader.h"
#include "health/topology.h"
#include "proxy/admin/proxy_metrics.h"

namespace pgrelay::admin {
namespace {

std::string Escaped(std::string_view value) {
  std::string out;
  AppendEscapedLabelValue(value, &out);
  return out;
}

std::string Formatted(double value) {
  std::string out;
  AppendValue(value, &out);
  return out;
}

// The value of the sample line that starts with `series` followed by a space; NaN if absent.
double Sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

bool HasLine(const std::string& text, const std::string& wanted) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line == wanted) return true;
  }
  return false;
}

TEST(MetricsFormatTest, EscapesLabelValues) {
  EXPECT_EQ(Escaped("plain"), "plain");
  EXPECT_EQ(Escaped(R"(a\b)"), R"(a\\b)");
  EXPECT_EQ(Escaped(R"(say "hi")"), R"(say \"hi\")");
  EXPECT_EQ(Escaped("two\nlines"), R"(two\nlines)");
  EXPECT_EQ(Escaped("tab\tand unicode é"), "tab\tand unicode é");  // only \ " and newline
}

TEST(MetricsFormatTest, EscapesHelp) {
  std::string out;
  AppendEscapedHelp("a \\ b\nc \"quoted\"", &out);
  EXPECT_EQ(out, R"(a \\ b\nc "quoted")");  // quotes stay as they are in HELP
}

TEST(MetricsFormatTest, FormatsValuesLikePrometheusClients) {
  EXPECT_EQ(Formatted(0), "0");
  EXPECT_EQ(Formatted(-0.0), "0");
  EXPECT_EQ(Formatted(42), "42");
  EXPECT_EQ(Formatted(-7), "-7");
  EXPECT_EQ(Formatted(1e14), "100000000000000");
  EXPECT_EQ(Formatted(0.0001), "0.0001");
  EXPECT_EQ(Formatted(0.00025), "0.00025");
  EXPECT_EQ(Formatted(2.5), "2.5");
  EXPECT_EQ(Formatted(0.1), "0.1");
  EXPECT_EQ(Formatted(1e-05), "1e-05");
  EXPECT_EQ(Formatted(1.5e21), "1.5e+21");
  EXPECT_EQ(Formatted(1234.5678), "1234.5678");
  EXPECT_EQ(Formatted(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(Formatted(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(Formatted(std::numeric_limits<double>::quiet_NaN()), "NaN");
  for (double v : {0.1 + 0.2, 1.0 / 3, 123456.789, 9.99e-5}) {
    EXPECT_EQ(std::stod(Formatted(v)), v) << Formatted(v);  // round-trips
  }
}

TEST(MetricsFormatTest, NameRules) {
  EXPECT_TRUE(IsValidMetricName("pgrelay_statements_total"));
  EXPECT_TRUE(IsValidMetricName("a:b_c9"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("9lives"));
  EXPECT_FALSE(IsValidMetricName("has-dash"));
  EXPECT_TRUE(IsValidLabelName("node"));
  EXPECT_FALSE(IsValidLabelName("__reserved"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("0x"));
}

TEST(RegistryTest, CountersWithLabelsExposeEverySeries) {
  Registry r;
  CounterFamily requests =
      r.AddCounter("test_requests_total", "Requests, by path.\nSecond line \\ here.",
                   {{"path", {"/a", "say \"b\""}}, {"code", {"200", "500"}}});
  CounterFamily plain = r.AddCounter("test_plain_total", "No labels.");
  r.Freeze(1);
  r.shard(0).Inc(requests.At(0, 1));
  r.shard(0).Inc(requests.At(1, 0), 5);
  r.shard(0).Inc(plain.At(), 3);
  const std::string text = r.Render();
  EXPECT_EQ(text,
            "# HELP test_requests_total Requests, by path.\\nSecond line \\\\ here.\n"
            "# TYPE test_requests_total counter\n"
            "test_requests_total{path=\"/a\",code=\"200\"} 0\n"
            "test_requests_total{path=\"/a\",code=\"500\"} 1\n"
            "test_requests_total{path=\"say \\\"b\\\"\",code=\"200\"} 5\n"
            "test_requests_total{path=\"say \\\"b\\\"\",code=\"500\"} 0\n"
            "# HELP test_plain_total No labels.\n"
            "# TYPE test_plain_total counter\n"
            "test_plain_total 3\n");
}

TEST(RegistryTest, LiveLabelValuesFollowTheirSlots) {
  auto nodes = std::make_shared<LiveLabelValues>();
  nodes->Set({"pg1", "pg2"});
  Registry r;
  CounterFamily hits = r.AddCounter("test_hits_total", "Hits, by node.",
                                    {{"node", std::vector<std::string>(3), nodes}});
  r.Freeze(1);
  r.shard(0).Inc(hits.At(1), 2);
  EXPECT_EQ(r.Render(),
            "# HELP test_hits_total Hits, by node.\n# TYPE test_hits_total counter\n"
            "test_hits_total{node=\"pg1\"} 0\ntest_hits_total{node=\"pg2\"} 2\n");
  // A reload removed pg1 (its slot has no name) and added pg3 in the third slot.
  nodes->Set({"", "pg2", "pg3"});
  r.shard(0).Inc(hits.At(2));
  EXPECT_EQ(r.Render(),
            "# HELP test_hits_total Hits, by node.\n# TYPE test_hits_total counter\n"
            "test_hits_total{node=\"pg2\"} 2\ntest_hits_total{node=\"pg3\"} 1\n");
}

TEST(RegistryTest, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  Registry r;
  HistogramFamily latency = r.AddHistogram("test_latency_seconds", "Latency.", {0.001, 0.01, 0.1},
                                           {{"node", {"pg1", "pg2"}}});
  r.Freeze(2);
  // Bounds are inclusive (le): 0.01 lands in the 0.01 bucket.
  for (double v : {0.0005, 0.001, 0.005, 0.01, 0.05, 3.0}) r.shard(0).Observe(latency.At(0), v);
  r.shard(1).Observe(latency.At(0), 0.0001);  // another shard, same series
  r.shard(1).Observe(latency.At(1), 7.0);
  const std::string text = r.Render();
  EXPECT_TRUE(HasLine(text, "# TYPE test_latency_seconds histogram"));
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_bucket{node=\"pg1\",le=\"0.001\"} 3")) << text;
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_bucket{node=\"pg1\",le=\"0.01\"} 5")) << text;
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_bucket{node=\"pg1\",le=\"0.1\"} 6")) << text;
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_bucket{node=\"pg1\",le=\"+Inf\"} 7")) << text;
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_count{node=\"pg1\"} 7")) << text;
  EXPECT_DOUBLE_EQ(Sample(text, "test_latency_seconds_sum{node=\"pg1\"}"),
                   0.0005 + 0.001 + 0.005 + 0.01 + 0.05 + 3.0 + 0.0001);
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_bucket{node=\"pg2\",le=\"0.1\"} 0")) << text;
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_bucket{node=\"pg2\",le=\"+Inf\"} 1")) << text;
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_sum{node=\"pg2\"} 7")) << text;
  EXPECT_TRUE(HasLine(text, "test_latency_seconds_count{node=\"pg2\"} 1")) << text;
}

TEST(RegistryTest, HistogramWithoutLabelsAndDefaultLatencyBuckets) {
  Registry r;
  HistogramFamily h = r.AddHistogram("test_seconds", "x", kLatencyBuckets);
  r.Freeze(1);
  r.shard(0).Observe(h.At(), 0.0002);
  r.shard(0).Observe(h.At(), std::numeric_limits<double>::quiet_NaN());  // ignored
  r.shard(0).Observe(h.At(), 11);                                        // +Inf only
  const std::string text = r.Render();
  EXPECT_TRUE(HasLine(text, "test_seconds_bucket{le=\"0.0001\"} 0")) << text;
  EXPECT_TRUE(HasLine(text, "test_seconds_bucket{le=\"0.00025\"} 1")) << text;
  EXPECT_TRUE(HasLine(text, "test_seconds_bucket{le=\"2.5\"} 1")) << text;
  EXPECT_TRUE(HasLine(text, "test_seconds_bucket{le=\"10\"} 1")) << text;
  EXPECT_TRUE(HasLine(text, "test_seconds_bucket{le=\"+Inf\"} 2")) << text;
  EXPECT_TRUE(HasLine(text, "test_seconds_count 2")) << text;
  EXPECT_TRUE(HasLine(text, "test_seconds_sum 11.0002")) << text;
}

TEST(RegistryTest, GaugesAddUpAcrossShardsAndCountersMirror) {
  Registry r;
  GaugeFamily open = r.AddGauge("test_open", "Open now.", {{"node", {"a", "b"}}});
  CounterFamily hits = r.AddCounter("test_hits_total", "Mirrored.");
  r.Freeze(3);
  r.shard(0).Add(open.At(0), 1);
  r.shard(0).Add(open.At(0), 1);
  r.shard(1).Add(open.At(0), 1);
  r.shard(0).Add(open.At(0), -1);
  r.shard(2).Set(open.At(1), 0.25);
  r.shard(1).Set(hits.At(), 10);
  r.shard(1).Set(hits.At(), 12);  // the mirrored total, not an increment
  r.shard(2).Inc(hits.At());
  EXPECT_EQ(r.Value(open.At(0)), 2);
  EXPECT_EQ(r.Value(open.At(1)), 0.25);
  EXPECT_EQ(r.Value(hits.At()), 13u);
  const std::string text = r.Render();
  EXPECT_TRUE(HasLine(text, "test_open{node=\"a\"} 2")) << text;
  EXPECT_TRUE(HasLine(text, "test_open{node=\"b\"} 0.25")) << text;
  EXPECT_TRUE(HasLine(text, "test_hits_total 13")) << text;
}

TEST(RegistryTest, ShardsWrittenByManyThreadsSumOnScrape) {
  constexpr int kThreads = 4;
  constexpr uint64_t kIncrements = 200000;
  Registry r;
  CounterFamily ops = r.AddCounter("test_ops_total", "Ops.", {{"kind", {"x", "y"}}});
  HistogramFamily h = r.AddHistogram("test_op_seconds", "Op time.", {0.5});
  r.Freeze(kThreads);
  std::atomic<bool> done{false};
  // A concurrent scraper sees monotonic, never torn, values.
  std::thread scraper([&] {
    double last = 0;
    while (!done.load()) {
      const double now = Sample(r.Render(), "test_ops_total{kind=\"x\"}");
      EXPECT_GE(now, last);
      EXPECT_LE(now, double(kThreads * kIncrements));
      last = now;
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      Shard& shard = r.shard(t);
      for (uint64_t i = 0; i < kIncrements; ++i) {
        shard.Inc(ops.At(0));
        if (i % 2 == 0) shard.Inc(ops.At(1), 2);
        if (i % 1000 == 0) shard.Observe(h.At(), t % 2 == 0 ? 0.25 : 1.0);
      }
    });
  }
  for (auto& w : writers) w.join();
  done = true;
  scraper.join();
  const std::string text = r.Render();
  EXPECT_EQ(Sample(text, "test_ops_total{kind=\"x\"}"), kThreads * kIncrements);
  EXPECT_EQ(Sample(text, "test_ops_total{kind=\"y\"}"), kThreads * kIncrements);
  const double per_thread = kIncrements / 1000;
  EXPECT_EQ(Sample(text, "test_op_seconds_bucket{le=\"0.5\"}"), 2 * per_thread);
  EXPECT_EQ(Sample(text, "test_op_seconds_count"), kThreads * per_thread);
  EXPECT_DOUBLE_EQ(Sample(text, "test_op_seconds_sum"), per_thread * (2 * 0.25 + 2 * 1.0));
}

TEST(RegistryTest, CallbackFamiliesRunAtScrape) {
  Registry r;
  int calls = 0;
  r.AddCallback(MetricType::kGauge, "test_node_up", "Up.", {"node"}, [&](SampleSink& sink) {
    ++calls;
    sink.Add({"pg\"1"}, 1);
    sink.Add({"pg2"}, 0);
    sink.Add({"too", "many"}, 5);  // wrong arity: dropped
  });
  r.AddCallback(MetricType::kCounter, "test_events_total", "Events.", {},
                [](SampleSink& sink) { sink.Add({}, 1.5e21); });
  r.Freeze(1);
  EXPECT_EQ(calls, 0);
  const std::string text = r.Render();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(text,
            "# HELP test_node_up Up.\n"
            "# TYPE test_node_up gauge\n"
            "test_node_up{node=\"pg\\\"1\"} 1\n"
            "test_node_up{node=\"pg2\"} 0\n"
            "# HELP test_events_total Events.\n"
            "# TYPE test_events_total counter\n"
            "test_events_total 1.5e+21\n");
}

TEST(RegistryTest, RejectsBadDefinitions) {
  Registry r;
  r.AddCounter("test_a_total", "x");
  r.AddHistogram("test_h", "x", {1});
  EXPECT_THROW(r.AddCounter("test_a_total", "dup"), std::invalid_argument);
  EXPECT_THROW(r.AddGauge("test_h_count", "clashes with the histogram"), std::invalid_argument);
  EXPECT_THROW(r.AddCounter("test_b", "no _total"), std::invalid_argument);
  EXPECT_THROW(r.AddGauge("bad-name", "x"), std::invalid_argument);
  EXPECT_THROW(r.AddGauge("test_g", "x", {{"__name", {"v"}}}), std::invalid_argument);
  EXPECT_THROW(r.AddGauge("test_g", "x", {{"l", {}}}), std::invalid_argument);
  EXPECT_THROW(r.AddGauge("test_g", "x", {{"l", {"a"}}, {"l", {"b"}}}), std::invalid_argument);
  EXPECT_THROW(r.AddHistogram("test_h2", "x", {1}, {{"le", {"a"}}}), std::invalid_argument);
  EXPECT_THROW(r.AddHistogram("test_h3", "x", {2, 1}), std::invalid_argument);
  EXPECT_THROW(r.AddHistogram("test_h4", "x", {}), std::invalid_argument);
  EXPECT_THROW(r.AddCallback(MetricType::kHistogram, "test_cb", "x", {}, nullptr),
               std::invalid_argument);
  r.Freeze(1);
  EXPECT_THROW(r.AddGauge("test_late", "x"), std::logic_error);
  EXPECT_THROW(r.Freeze(1), std::logic_error);
}

// A topology like the health monitor publishes: pg1 primary, pg2 replica lagging, pg3 down.
std::shared_ptr<const health::Topology> FakeTopology() {
  auto t = std::make_shared<health::Topology>();
  t->version = 7;
  t->epoch = 2;
  health::NodeStatus pg1;
  pg1.name = "pg1";
  pg1.host = "127.0.0.1";
  pg1.port = 5432;
  pg1.state = health::NodeHealth::kUp;
  pg1.role = health::NodeRole::kPrimary;
  pg1.up = true;
  pg1.current_lsn = 0x3000060;
  pg1.timeline = 1;
  pg1.replay_lag_bytes = 0;
  pg1.replay_lag_seconds = 0.0;
  health::NodeStatus pg2;
  pg2.name = "pg2";
  pg2.host = "127.0.0.1";
  pg2.port = 5433;
  pg2.state = health::NodeHealth::kUp;
  pg2.role = health::NodeRole::kReplica;
  pg2.up = true;
  pg2.replay_lsn = 0x3000000;
  pg2.timeline = 1;
  pg2.replay_lag_bytes = 0x60;
  pg2.replay_lag_seconds = 1.25;
  pg2.probe_failures_total = 4;
  health::NodeStatus pg3;
  pg3.name = "pg3";
  pg3.host = "127.0.0.1";
  pg3.port = 5434;
  pg3.last_error = "connection refused";
  t->nodes = {pg1, pg2, pg3};
  t->primary = 0;
  t->replicas = {1};
  return t;
}

config::Config ThreeNodeConfig() {
  const config::LoadResult result = config::LoadConfigString(R"(nodes:
  - {name: pg1, host: 127.0.0.1, port: 5432}
  - {name: pg2, host: 127.0.0.1, port: 5433}
  - {name: pg3, host: 127.0.0.1, port: 5434}
users:
  - {name: app, password: secret}
)");
  EXPECT_TRUE(result.errors.empty());
  return result.config ? *result.config : config::Config{};
}

TEST(ProxyMetricsTest, ExposesTheDocumentedFamilies) {
  const config::Config config = ThreeNodeConfig();
  ProxyMetrics m(config, 2, [] { return FakeTopology(); });
  Shard& w0 = m.WorkerShard(0);
  Shard& w1 = m.WorkerShard(1);
  w0.Add(m.client_connections.At(), 1);
  w1.Add(m.client_connections.At(), 1);
  w0.Inc(m.client_connections_total.At());
  w1.Inc(m.client_connections_total.At());
  w1.Inc(m.client_connections_rejected.At(RejectReason::kAuthFailed));
  w0.Add(m.backend_connections.At(1), 1);
  w0.Inc(m.statements.At(1, StatementClass::kRead, config::Strategy::kFollower), 3);
  w1.Inc(m.statements.At(0, StatementClass::kWrite, config::Strategy::kFollower));
  w0.Observe(m.statement_duration.At(1), 0.003);
  w0.Inc(m.client_bytes_received.At(), 100);
  w0.Inc(m.sessions_pinned.At(PinReason::kListen));
  m.ControlShard().Inc(m.config_reloads.At(ReloadResult::kFailure));
  m.ControlShard().Inc(m.consistency_waits.At(ConsistencyStrategy::kQuorum));

  EXPECT_EQ(m.ClientConnections(), 2);
  const std::vector<int64_t> backends = m.BackendConnections();
  ASSERT_EQ(backends.size(), config::kMaxNodes);
  EXPECT_EQ(std::vector<int64_t>(backends.begin(), backends.begin() + 4),
            (std::vector<int64_t>{0, 1, 0, 0}));
  const std::string text = m.registry().Render();
  for (const char* line : {
           "pgrelay_client_connections 2",
           "pgrelay_client_connections_total 2",
           "pgrelay_client_connections_rejected_total{reason=\"auth_failed\"} 1",
           "pgrelay_client_connections_rejected_total{reason=\"max_connections\"} 0",
           "pgrelay_backend_connections{node=\"pg2\"} 1",
           "pgrelay_statements_total{node=\"pg2\",class=\"read\",strategy=\"follower\"} 3",
           "pgrelay_statements_total{node=\"pg1\",class=\"write\",strategy=\"follower\"} 1",
           "pgrelay_statements_total{node=\"pg3\",class=\"other\",strategy=\"quorum\"} 0",
           "pgrelay_statement_duration_seconds_bucket{node=\"pg2\",le=\"0.0025\"} 0",
           "pgrelay_statement_duration_seconds_bucket{node=\"pg2\",le=\"0.005\"} 1",
           "pgrelay_statement_duration_seconds_count{node=\"pg2\"} 1",
           "pgrelay_client_bytes_received_total 100",
           "pgrelay_client_bytes_sent_total 0",
           "pgrelay_sessions_pinned_total{reason=\"listen\"} 1",
           "pgrelay_health_probe_failures_total{node=\"pg2\"} 4",
           "pgrelay_config_reloads_total{result=\"failure\"} 1",
           "pgrelay_consistency_waits_total{strategy=\"quorum\"} 1",
           "pgrelay_reads_fallback_primary_total 0",
           "pgrelay_classifier_cache_hits_total 0",
           "pgrelay_classifier_cache_misses_total 0",
           "pgrelay_node_up{node=\"pg1\"} 1",
           "pgrelay_node_up{node=\"pg3\"} 0",
           "pgrelay_node_state{node=\"pg3\",state=\"down\"} 1",
           "pgrelay_node_state{node=\"pg3\",state=\"up\"} 0",
           "pgrelay_node_role{node=\"pg1\",role=\"primary\"} 1",
           "pgrelay_node_role{node=\"pg2\",role=\"replica\"} 1",
           "pgrelay_node_role{node=\"pg3\",role=\"unknown\"} 1",
           "pgrelay_node_replay_lag_bytes{node=\"pg2\"} 96",
           "pgrelay_node_replay_lag_seconds{node=\"pg2\"} 1.25",
           "pgrelay_node_replay_lag_bytes{node=\"pg1\"} 0",
           "pgrelay_node_timeline{node=\"pg1\"} 1",
           "pgrelay_topology_epoch 2",
           "pgrelay_topology_primary_conflict 0",
           "# TYPE pgrelay_statement_duration_seconds histogram",
           "# TYPE pgrelay_statements_total counter",
           "# TYPE pgrelay_node_replay_lag_seconds gauge",
       }) {
    EXPECT_TRUE(HasLine(text, line)) << "missing: " << line;
  }
  // Unknown lag is absent, not 0.
  EXPECT_EQ(text.find("pgrelay_node_replay_lag_bytes{node=\"pg3\"}"), std::string::npos);
  EXPECT_GT(Sample(text, "pgrelay_start_time_seconds"), 1.6e9);
}

TEST(ProxyMetricsTest, NoTopologyYetMeansNoNodeSamples) {
  ProxyMetrics m(ThreeNodeConfig(), 1, [] { return nullptr; });
  const std::string text = m.registry().Render();
  EXPECT_EQ(text.find("pgrelay_node_up{"), std::string::npos);
  EXPECT_TRUE(HasLine(text, "# TYPE pgrelay_node_up gauge"));
}

// promtool (Debian package `prometheus`) checks the exposition format and best practices.
TEST(ProxyMetricsTest, PromtoolAcceptsTheExposition) {
  const char* promtool = "/usr/bin/promtool";
  if (access(promtool, X_OK) != 0)
    GTEST_SKIP() << "promtool not installed (apt-get install prometheus)";
  ProxyMetrics m(ThreeNodeConfig(), 2, [] { return FakeTopology(); });
  m.WorkerShard(0).Observe(m.statement_duration.At(0), 0.02);
  const std::string path =
      (std::filesystem::temp_directory_path() / ("pgrelay_metrics_" + std::to_string(getpid())))
          .string();
  {
    std::ofstream out(path);
    out << m.registry().Render();
  }
  const std::string command = std::string(promtool) + " check metrics < " + path + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) output.append(buf, n);
  const int status = pclose(pipe);
  std::filesystem::remove(path);
  EXPECT_EQ(status, 0) << output;
  EXPECT_EQ(output, "") << "promtool lint findings";
}

}  // namespace
}  // namespace pgrelay::admin
