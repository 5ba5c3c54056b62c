// A metrics registry for a thread-per-core process: counters, gauges and histograms with labels,
// rendered in the Prometheus text exposition format 0.0.4. Set up on one thread (Add*, then
// Freeze); after Freeze each Shard is written by exactly one thread (relaxed loads and stores,
// no locks, no read-modify-write), and Render() may run on another thread at the same time.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::admin {

enum class MetricType { kCounter, kGauge, kHistogram };

// Label values that may change after Freeze (node names after a config reload), for a
// dimension with a fixed number of slots. A slot whose value is empty has no series (it is left
// out of the exposition). Set() from any thread; the scrape reads a snapshot.
class LiveLabelValues {
 public:
  void Set(std::vector<std::string> values) {
    values_.store(std::make_shared<const std::vector<std::string>>(std::move(values)),
                  std::memory_order_release);
  }
  std::shared_ptr<const std::vector<std::string>> Get() const {
    return values_.load(std::memory_order_acquire);
  }

 private:
  std::atomic<std::shared_ptr<const std::vector<std::string>>> values_{
      std::make_shared<const std::vector<std::string>>()};
};

// One label of a sharded family, with every value it can take (known at start-up). A series'
// label value is chosen by its index into `values`, so an increment is an array index.
// With `live` set, `values` only sets the number of slots, and the names come from `live`.
struct LabelDim {
  LabelDim(std::string n, std::vector<std::string> v,
           std::shared_ptr<const LiveLabelValues> l = nullptr)
      : name(std::move(n)), values(std::move(v)), live(std::move(l)) {}

  std::string name;
  std::vector<std::string> values;
  std::shared_ptr<const LiveLabelValues> live;
};

// Statement latency in seconds, 100 µs .. 10 s.
inline const std::vector<double> kLatencyBuckets = {
    .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10};

// Series handles: which cells of a shard a series uses. Small values; copy freely.
struct CounterSeries {
  uint32_t cell = 0;
};
struct GaugeSeries {
  uint32_t cell = 0;
};
struct HistogramSeries {
  uint32_t cell = 0;               // first bucket cell; buckets, then +Inf, then the sum
  uint32_t buckets = 0;            // finite upper bounds
  const double* bounds = nullptr;  // ascending; owned by the registry
};

// A family's label-index arithmetic: At(i, j, ...) takes one index per label, in label order,
// each below its LabelDim's value count (checked by assert only: this is the hot path).
class FamilyIndex {
 public:
  static constexpr size_t kMaxLabels = 4;

 protected:
  template <typename... I>
  uint32_t Cell(I... index) const {
    assert(sizeof...(I) == labels_);
    uint32_t offset = 0;
    size_t d = 0;
    ((assert(static_cast<uint32_t>(index) < dims_[d]),
      offset = offset * dims_[d] + static_cast<uint32_t>(index), ++d),
     ...);
    return first_ + offset * stride_;
  }

 private:
  friend class Registry;
  uint32_t first_ = 0;   // first cell of the first series
  uint32_t stride_ = 1;  // cells per series
  uint32_t labels_ = 0;
  std::array<uint32_t, kMaxLabels> dims_{};
};

class CounterFamily : public FamilyIndex {
 public:
  template <typename... I>
  CounterSeries At(I... index) const {
    return {Cell(index...)};
  }
};

class GaugeFamily : public FamilyIndex {
 public:
  template <typename... I>
  GaugeSeries At(I... index) const {
    return {Cell(index...)};
  }
};

class HistogramFamily : public FamilyIndex {
 public:
  template <typename... I>
  HistogramSeries At(I... index) const {
    return {Cell(index...), buckets_, bounds_};
  }

 private:
  friend class Registry;
  uint32_t buckets_ = 0;
  const double* bounds_ = nullptr;
};

// One thread's cells. Only the owning thread writes (Inc/Set/Add/Observe); the scrape thread
// reads. Cells are relaxed atomics written by load+store: no locked instruction, no sharing
// with other writers (each shard starts on its own cache line).
class Shard {
 public:
  explicit Shard(size_t cells);
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  void Inc(CounterSeries s, uint64_t n = 1) { Store(s.cell, Load(s.cell) + n); }
  // Mirrors a monotonic count this thread keeps elsewhere (e.g. Classifier::Stats): the
  // shard's value becomes `total`.
  void Set(CounterSeries s, uint64_t total) { Store(s.cell, total); }

  // Gauges hold a double. Shards add up: connections opened and closed on the same thread
  // (+1/-1) sum to the process-wide count. Set() a gauge from one shard only.
  void Add(GaugeSeries s, double delta) { SetDouble(s.cell, GetDouble(s.cell) + delta); }
  void Set(GaugeSeries s, double value) { SetDouble(s.cell, value); }

  // Counts `value` in the first bucket whose upper bound is >= value (+Inf if none) and adds
  // it to the sum; ignores NaN (it would poison the sum). Buckets are stored per bucket and
  // made cumulative when rendered.
  void Observe(const HistogramSeries& s, double value) {
    if (value != value) return;
    uint32_t b = 0;
    while (b < s.buckets && !(value <= s.bounds[b])) ++b;
    Store(s.cell + b, Load(s.cell + b) + 1);
    const uint32_t sum = s.cell + s.buckets + 1;
    SetDouble(sum, GetDouble(sum) + value);
  }

  uint64_t Load(uint32_t cell) const {
    return lines_[cell / kCellsPerLine].cell[cell % kCellsPerLine].load(std::memory_order_relaxed);
  }
  double GetDouble(uint32_t cell) const { return std::bit_cast<double>(Load(cell)); }

 private:
  static constexpr size_t kCellsPerLine = 8;
  struct alignas(64) Line {
    std::atomic<uint64_t> cell[kCellsPerLine] = {};
  };

  void Store(uint32_t cell, uint64_t value) {
    lines_[cell / kCellsPerLine].cell[cell % kCellsPerLine].store(value, std::memory_order_relaxed);
  }
  void SetDouble(uint32_t cell, double value) { Store(cell, std::bit_cast<uint64_t>(value)); }

  std::unique_ptr<Line[]> lines_;
};

// Receives the samples of a callback family at scrape time: one call per series, with one label
// value per label name. Samples with the wrong number of values are dropped.
class SampleSink {
 public:
  void Add(std::initializer_list<std::string_view> label_values, double value) {
    Add(std::span<const std::string_view>(label_values.begin(), label_values.size()), value);
  }
  void Add(std::span<const std::string_view> label_values, double value);

 private:
  friend class Registry;
  SampleSink(std::string_view name, std::span<const std::string> label_names, std::string* out)
      : name_(name), label_names_(label_names), out_(out) {}
  std::string_view name_;
  std::span<const std::string> label_names_;
  std::string* out_;
};

// Computes a family's samples at scrape time, on the scraping thread. Must be thread-safe with
// respect to the rest of the process (read immutable snapshots, atomics).
using Collector = std::function<void(SampleSink&)>;

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Start-up only (before Freeze). Names must be valid Prometheus names (counters end in
  // _total), unique; label names valid and not reserved. Throws std::invalid_argument
  // otherwise, std::logic_error after Freeze. Every combination of label values is a series
  // and is exposed from the start (at 0).
  CounterFamily AddCounter(std::string name, std::string help, std::vector<LabelDim> labels = {});
  GaugeFamily AddGauge(std::string name, std::string help, std::vector<LabelDim> labels = {});
  // `bounds`: finite upper bounds, strictly ascending; +Inf is implied.
  HistogramFamily AddHistogram(std::string name, std::string help, std::vector<double> bounds,
                               std::vector<LabelDim> labels = {});
  // A family whose samples `collect` computes at scrape time (type counter or gauge).
  void AddCallback(MetricType type, std::string name, std::string help,
                   std::vector<std::string> label_names, Collector collect);

  // Allocates `shards` shards (e.g. one per worker thread plus one per other writing thread).
  void Freeze(size_t shards);
  bool frozen() const { return !shards_.empty(); }
  size_t shard_count() const { return shards_.size(); }
  Shard& shard(size_t i) { return *shards_.at(i); }

  // The exposition text (format 0.0.4): families in registration order, shards summed.
  // Thread-safe with the shards' writers; several Render() calls may run concurrently if the
  // collectors allow it.
  std::string Render() const;
  void RenderTo(std::string* out) const;

  // The sum over all shards of one series (tests, /cluster).
  uint64_t Value(CounterSeries s) const;
  double Value(GaugeSeries s) const;

  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  struct Family;

  Family& Add(MetricType type, std::string name, std::string help, std::vector<LabelDim> labels,
              uint32_t stride);
  static void SetIndex(const Family& f, FamilyIndex* index);
  void RenderFamily(const Family& f, std::string* out) const;

  std::vector<std::unique_ptr<Family>> families_;
  uint32_t cells_ = 0;
  std::vector<std::unique_ptr<Shard>> shards_;
};

// Text-format helpers (exposed for tests).
// A label value with \ " and newline escaped.
void AppendEscapedLabelValue(std::string_view value, std::string* out);
// A HELP text with \ and newline escaped.
void AppendEscapedHelp(std::string_view help, std::string* out);
// A sample value: integers without a fraction, +Inf/-Inf/NaN, else the shortest round-trip form
// (0.0001, 2.5, 1e-05) as Go's strconv 'g' writes it.
void AppendValue(double value, std::string* out);
bool IsValidMetricName(std::string_view name);
bool IsValidLabelName(std::string_view name);

}  // namespace pgrelay::admin
