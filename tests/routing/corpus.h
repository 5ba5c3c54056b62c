// Reads tests/routing/corpus.tsv (format described at its top). For tests and benchmarks;
// stateless functions.
#pragma once

#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace pgrelay::routing::testing {

struct CorpusEntry {
  int line = 0;
  std::string route;   // "read" | "write"
  std::string checks;  // "-" or space-separated checks
  std::string sql;
};

// Builds a new string (GCC 12 warns falsely about std::string::replace at -O3).
inline std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0;;) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) {
      out.append(s.substr(pos));
      return out;
    }
    out.append(s.substr(pos, hit - pos)).append(to);
    pos = hit + from.size();
  }
}

inline std::vector<CorpusEntry> LoadCorpus(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<CorpusEntry> entries;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line.front() == '#') continue;
    const size_t tab1 = line.find('\t');
    const size_t tab2 = tab1 == std::string::npos ? tab1 : line.find('\t', tab1 + 1);
    if (tab2 == std::string::npos) {
      throw std::runtime_error(path + ":" + std::to_string(number) + ": expected 3 columns");
    }
    CorpusEntry e;
    e.line = number;
    e.route = line.substr(0, tab1);
    e.checks = line.substr(tab1 + 1, tab2 - tab1 - 1);
    e.sql = ReplaceAll(ReplaceAll(std::string_view(line).substr(tab2 + 1), "\u23CE", "\n"),
                       "\u21E5", "\t");
    entries.push_back(std::move(e));
  }
  return entries;
}

}  // namespace pgrelay::routing::testing
