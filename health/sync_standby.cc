#include "health/sync_standby.h"

#include <cctype>
#include <charconv>

namespace pgrelay::health {

namespace {

class Lexer {
 public:
  explicit Lexer(std::string_view s) : s_(s) {}

  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool AtEnd() {
    SkipSpace();
    return pos_ == s_.size();
  }
  bool Take(char c) {
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  std::optional<int> Number() {
    SkipSpace();
    int v = 0;
    auto [ptr, ec] = std::from_chars(s_.data() + pos_, s_.data() + s_.size(), v);
    if (ec != std::errc()) return std::nullopt;
    pos_ = static_cast<size_t>(ptr - s_.data());
    return v;
  }
  // A standby name: "quoted" (kept as written, "" for a quote) or a bare word (lower-cased),
  // or '*'. Empty on error.
  std::optional<std::string> Name() {
    SkipSpace();
    if (pos_ >= s_.size()) return std::nullopt;
    std::string out;
    if (s_[pos_] == '"') {
      ++pos_;
      for (;;) {
        if (pos_ >= s_.size()) return std::nullopt;
        char c = s_[pos_++];
        if (c == '"') {
          if (pos_ < s_.size() && s_[pos_] == '"') {
            out += '"';
            ++pos_;
            continue;
          }
          return out;
        }
        out += c;
      }
    }
    if (s_[pos_] == '*') {
      ++pos_;
      return std::string("*");
    }
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' || c == '-' ||
            c == '.')) {
        break;
      }
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      ++pos_;
    }
    if (out.empty()) return std::nullopt;
    return out;
  }
  size_t pos() const { return pos_; }
  void Reset(size_t p) { pos_ = p; }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::optional<SyncStandbys> ParseSynchronousStandbyNames(std::string_view text) {
  Lexer lex(text);
  if (lex.AtEnd()) return std::nullopt;
  SyncStandbys out;
  // [FIRST | ANY] k ( names ) | names   (a bare list means FIRST 1)
  const size_t start = lex.pos();
  const std::optional<std::string> word = lex.Name();
  const bool has_method = word && (*word == "any" || *word == "first");
  if (has_method) {
    out.any = *word == "any";
  } else {
    lex.Reset(start);
  }
  bool parenthesized = false;
  const size_t before_k = lex.pos();
  if (const std::optional<int> k = lex.Number(); k && lex.Take('(')) {
    if (*k < 1) return std::nullopt;
    out.k = *k;
    parenthesized = true;
  } else if (has_method) {
    return std::nullopt;
  } else {
    lex.Reset(before_k);
  }
  for (;;) {
    std::optional<std::string> name = lex.Name();
    if (!name) return std::nullopt;
    if (*name == "*") return std::nullopt;
    out.names.push_back(std::move(*name));
    if (lex.Take(',')) continue;
    break;
  }
  if (parenthesized && !lex.Take(')')) return std::nullopt;
  if (!lex.AtEnd()) return std::nullopt;
  if (out.k > static_cast<int>(out.names.size())) return std::nullopt;
  return out;
}

bool StandbyNameMatches(std::string_view configured, std::string_view application_name) {
  return Lower(configured) == Lower(application_name);
}

}  // namespace pgrelay::health
