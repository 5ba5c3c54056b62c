#include "proxy/admin/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace pgrelay::admin {

namespace {

constexpr uint32_t kMaxCells = 1u << 22;  // 32 MiB per shard: far beyond any sane label set

bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// The names a family's samples use.
std::vector<std::string> ExposedNames(MetricType type, const std::string& name) {
  if (type != MetricType::kHistogram) return {name};
  return {name, name + "_bucket", name + "_sum", name + "_count"};
}

void AppendUint(uint64_t value, std::string* out) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  out->append(buf, end);
}

// `{a="x",b="y"` without the closing brace, or nothing if there are no labels and no extra.
void AppendLabels(std::span<const std::string> names, std::span<const std::string_view> values,
                  std::string* out) {
  for (size_t i = 0; i < names.size(); ++i) {
    out->push_back(i == 0 ? '{' : ',');
    out->append(names[i]);
    out->append("=\"");
    AppendEscapedLabelValue(values[i], out);
    out->push_back('"');
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Text-format helpers
// ---------------------------------------------------------------------------------------------

void AppendEscapedLabelValue(std::string_view value, std::string* out) {
  for (char c : value) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '"':
        out->append("\\\"");
        break;
      case '\n':
        out->append("\\n");
        break;
      default:
        out->push_back(c);
    }
  }
}

void AppendEscapedHelp(std::string_view help, std::string* out) {
  for (char c : help) {
    switch (c) {
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      default:
        out->push_back(c);
    }
  }
}

void AppendValue(double value, std::string* out) {
  if (std::isnan(value)) {
    out->append("NaN");
    return;
  }
  if (std::isinf(value)) {
    out->append(value > 0 ? "+Inf" : "-Inf");
    return;
  }
  char buf[64];
  if (value == std::trunc(value) && std::fabs(value) < 1e15) {
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(value));
    out->append(buf, end);
    return;
  }
  // Go's strconv.FormatFloat(v, 'g', -1, 64): shortest digits; exponent form when the decimal
  // exponent is < -4 or >= 21.
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  std::string_view sci(buf, end - buf);
  const size_t e = sci.find('e');
  int exponent = 0;
  std::from_chars(sci.data() + e + 1 + (sci[e + 1] == '+' ? 1 : 0), sci.data() + sci.size(),
                  exponent);
  if (exponent < -4 || exponent >= 21) {
    out->append(sci);
    return;
  }
  auto [fixed_end, fixed_ec] =
      std::to_chars(buf, buf + sizeof buf, value, std::chars_format::fixed);
  out->append(buf, fixed_end);
}

bool IsValidMetricName(std::string_view name) {
  if (name.empty() || !(IsNameStart(name[0]) || name[0] == ':')) return false;
  for (char c : name) {
    if (!IsNameStart(c) && !IsDigit(c) && c != ':') return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || !IsNameStart(name[0]) || name.starts_with("__")) return false;
  for (char c : name) {
    if (!IsNameStart(c) && !IsDigit(c)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Shard, SampleSink
// ---------------------------------------------------------------------------------------------

Shard::Shard(size_t cells)
    : lines_(std::make_unique<Line[]>((cells + kCellsPerLine - 1) / kCellsPerLine + 1)) {}

void SampleSink::Add(std::span<const std::string_view> label_values, double value) {
  if (label_values.size() != label_names_.size()) return;
  out_->append(name_);
  AppendLabels(label_names_, label_values, out_);
  if (!label_names_.empty()) out_->push_back('}');
  out_->push_back(' ');
  AppendValue(value, out_);
  out_->push_back('\n');
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

struct Registry::Family {
  MetricType type = MetricType::kCounter;
  std::string name;
  std::string help;
  std::vector<LabelDim> labels;          // sharded families
  std::vector<std::string> label_names;  // every family
  uint32_t first = 0;                    // first cell (sharded families)
  uint32_t stride = 1;                   // cells per series
  uint32_t series = 1;                   // number of series (sharded families)
  std::vector<double> bounds;            // histograms
  std::vector<std::string> bound_texts;  // the le="..." values, +Inf last
  Collector collect;                     // callback families
};

Registry::Registry() = default;
Registry::~Registry() = default;

Registry::Family& Registry::Add(MetricType type, std::string name, std::string help,
                                std::vector<LabelDim> labels, uint32_t stride) {
  if (frozen()) throw std::logic_error("metric " + name + " added after Registry::Freeze");
  if (!IsValidMetricName(name)) throw std::invalid_argument("invalid metric name '" + name + "'");
  if (type == MetricType::kCounter && !name.ends_with("_total")) {
    throw std::invalid_argument("counter " + name + " must end in _total");
  }
  for (const auto& f : families_) {
    for (std::string_view a : ExposedNames(type, name)) {
      for (std::string_view b : ExposedNames(f->type, f->name)) {
        if (a == b) throw std::invalid_argument("metric name " + std::string(a) + " is taken");
      }
    }
  }
  if (labels.size() > FamilyIndex::kMaxLabels) {
    throw std::invalid_argument("metric " + name + " has more than 4 labels");
  }
  auto family = std::make_unique<Family>();
  uint64_t series = 1;
  for (size_t i = 0; i < labels.size(); ++i) {
    const LabelDim& dim = labels[i];
    if (!IsValidLabelName(dim.name) || (type == MetricType::kHistogram && dim.name == "le")) {
      throw std::invalid_argument("metric " + name + ": invalid label name '" + dim.name + "'");
    }
    for (size_t j = 0; j < i; ++j) {
      if (labels[j].name == dim.name) {
        throw std::invalid_argument("metric " + name + ": duplicate label " + dim.name);
      }
    }
    if (dim.values.empty()) {
      throw std::invalid_argument("metric " + name + ": label " + dim.name + " has no values");
    }
    series *= dim.values.size();
    family->label_names.push_back(dim.name);
  }
  if (cells_ + series * stride > kMaxCells) {
    throw std::invalid_argument("metric " + name + " has too many series");
  }
  family->type = type;
  family->name = std::move(name);
  family->help = std::move(help);
  family->labels = std::move(labels);
  family->first = cells_;
  family->stride = stride;
  family->series = static_cast<uint32_t>(series);
  cells_ += static_cast<uint32_t>(series * stride);
  families_.push_back(std::move(family));
  return *families_.back();
}

void Registry::SetIndex(const Family& f, FamilyIndex* index) {
  index->first_ = f.first;
  index->stride_ = f.stride;
  index->labels_ = static_cast<uint32_t>(f.labels.size());
  for (size_t i = 0; i < f.labels.size(); ++i) {
    index->dims_[i] = static_cast<uint32_t>(f.labels[i].values.size());
  }
}

CounterFamily Registry::AddCounter(std::string name, std::string help,
                                   std::vector<LabelDim> labels) {
  Family& f = Add(MetricType::kCounter, std::move(name), std::move(help), std::move(labels), 1);
  CounterFamily handle;
  SetIndex(f, &handle);
  return handle;
}

GaugeFamily Registry::AddGauge(std::string name, std::string help, std::vector<LabelDim> labels) {
  Family& f = Add(MetricType::kGauge, std::move(name), std::move(help), std::move(labels), 1);
  GaugeFamily handle;
  SetIndex(f, &handle);
  return handle;
}

HistogramFamily Registry::AddHistogram(std::string name, std::string help,
                                       std::vector<double> bounds, std::vector<LabelDim> labels) {
  if (bounds.empty()) throw std::invalid_argument("histogram " + name + " has no buckets");
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i]) || (i > 0 && !(bounds[i - 1] < bounds[i]))) {
      throw std::invalid_argument("histogram " + name +
                                  ": bucket bounds must be finite and strictly ascending");
    }
  }
  // Cells per series: one per finite bucket, +Inf, the sum.
  const auto stride = static_cast<uint32_t>(bounds.size() + 2);
  Family& f =
      Add(MetricType::kHistogram, std::move(name), std::move(help), std::move(labels), stride);
  f.bounds = std::move(bounds);
  for (double b : f.bounds) {
    std::string text;
    AppendValue(b, &text);
    f.bound_texts.push_back(std::move(text));
  }
  f.bound_texts.push_back("+Inf");
  HistogramFamily handle;
  SetIndex(f, &handle);
  handle.buckets_ = static_cast<uint32_t>(f.bounds.size());
  handle.bounds_ = f.bounds.data();
  return handle;
}

void Registry::AddCallback(MetricType type, std::string name, std::string help,
                           std::vector<std::string> label_names, Collector collect) {
  if (type == MetricType::kHistogram) {
    throw std::invalid_argument("callback metric " + name + " must be a counter or a gauge");
  }
  std::vector<LabelDim> dims;
  for (std::string& label : label_names) dims.push_back({std::move(label), {""}});
  Family& f = Add(type, std::move(name), std::move(help), std::move(dims), 0);
  f.labels.clear();
  f.series = 0;
  f.collect = std::move(collect);
}

void Registry::Freeze(size_t shards) {
  if (frozen()) throw std::logic_error("Registry::Freeze called twice");
  if (shards == 0) throw std::invalid_argument("Registry::Freeze needs at least one shard");
  for (size_t i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>(cells_));
}

uint64_t Registry::Value(CounterSeries s) const {
  uint64_t sum = 0;
  for (const auto& shard : shards_) sum += shard->Load(s.cell);
  return sum;
}

double Registry::Value(GaugeSeries s) const {
  double sum = 0;
  for (const auto& shard : shards_) sum += shard->GetDouble(s.cell);
  return sum;
}

std::string Registry::Render() const {
  std::string out;
  RenderTo(&out);
  return out;
}

void Registry::RenderTo(std::string* out) const {
  for (const auto& f : families_) RenderFamily(*f, out);
}

void Registry::RenderFamily(const Family& f, std::string* out) const {
  out->append("# HELP ").append(f.name).push_back(' ');
  AppendEscapedHelp(f.help, out);
  out->append("\n# TYPE ").append(f.name).push_back(' ');
  out->append(TypeName(f.type)).push_back('\n');
  if (f.collect) {
    SampleSink sink(f.name, f.label_names, out);
    f.collect(sink);
    return;
  }
  std::array<std::string_view, FamilyIndex::kMaxLabels> values;
  const std::span<const std::string_view> value_span(values.data(), f.labels.size());
  std::vector<uint64_t> buckets(f.type == MetricType::kHistogram ? f.bounds.size() + 1 : 0);
  // The current names of live dimensions, for the whole family.
  std::array<std::shared_ptr<const std::vector<std::string>>, FamilyIndex::kMaxLabels> live;
  for (size_t d = 0; d < f.labels.size(); ++d) {
    if (f.labels[d].live) live[d] = f.labels[d].live->Get();
  }
  for (uint32_t s = 0; s < f.series; ++s) {
    // Label values of series s: mixed radix, the last label varying fastest.
    uint32_t rest = s;
    bool unused = false;
    for (size_t d = f.labels.size(); d-- > 0;) {
      const auto n = static_cast<uint32_t>(f.labels[d].values.size());
      const uint32_t v = rest % n;
      if (live[d]) {
        values[d] = v < live[d]->size() ? std::string_view((*live[d])[v]) : std::string_view();
        unused |= values[d].empty();
      } else {
        values[d] = f.labels[d].values[v];
      }
      rest /= n;
    }
    if (unused) continue;
    const uint32_t cell = f.first + s * f.stride;
    if (f.type != MetricType::kHistogram) {
      out->append(f.name);
      AppendLabels(f.label_names, value_span, out);
      if (!f.labels.empty()) out->push_back('}');
      out->push_back(' ');
      if (f.type == MetricType::kCounter) {
        AppendUint(Value(CounterSeries{cell}), out);
      } else {
        AppendValue(Value(GaugeSeries{cell}), out);
      }
      out->push_back('\n');
      continue;
    }
    std::fill(buckets.begin(), buckets.end(), 0);
    double sum = 0;
    for (const auto& shard : shards_) {
      for (size_t b = 0; b < buckets.size(); ++b) buckets[b] += shard->Load(cell + b);
      sum += shard->GetDouble(cell + static_cast<uint32_t>(buckets.size()));
    }
    uint64_t cumulative = 0;
    for (size_t b = 0; b < buckets.size(); ++b) {
      cumulative += buckets[b];
      out->append(f.name).append("_bucket");
      AppendLabels(f.label_names, value_span, out);
      out->append(f.labels.empty() ? "{le=\"" : ",le=\"").append(f.bound_texts[b]).append("\"} ");
      AppendUint(cumulative, out);
      out->push_back('\n');
    }
    out->append(f.name).append("_sum");
    AppendLabels(f.label_names, value_span, out);
    if (!f.labels.empty()) out->push_back('}');
    out->push_back(' ');
    AppendValue(sum, out);
    out->append("\n").append(f.name).append("_count");
    AppendLabels(f.label_names, value_span, out);
    if (!f.labels.empty()) out->push_back('}');
    out->push_back(' ');
    AppendUint(cumulative, out);
    out->push_back('\n');
  }
}

}  // namespace pgrelay::admin
