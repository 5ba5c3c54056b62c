#include "proxy/pgrelay_settings.h"

#include <cctype>

#include "routing/sql_scan.h"

namespace pgrelay::proxy {

namespace {

constexpr std::string_view kPrefix = "pgrelay.";

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

bool IsSpace(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f'; }

// 'it''s' -> it's; anything else is returned as written (numbers, identifiers).
std::string Unquote(std::string_view v) {
  if (v.size() < 2 || v.front() != '\'' || v.back() != '\'') return std::string(v);
  std::string out;
  for (size_t i = 1; i + 1 < v.size(); ++i) {
    out += v[i];
    if (v[i] == '\'' && i + 2 < v.size() && v[i + 1] == '\'') ++i;
  }
  return out;
}

// "SHOW name" with optional whitespace and a trailing semicolon; the name lower-cased, or empty.
std::string ShowName(std::string_view sql) {
  size_t i = 0;
  auto skip = [&] {
    while (i < sql.size() && IsSpace(sql[i])) ++i;
  };
  skip();
  if (sql.size() - i < 5 || !routing::EqualsIgnoreCase(sql.substr(i, 4), "show") ||
      !IsSpace(sql[i + 4])) {
    return {};
  }
  i += 4;
  skip();
  const size_t start = i;
  while (i < sql.size() && (std::isalnum(static_cast<unsigned char>(sql[i])) || sql[i] == '_' ||
                            sql[i] == '.')) {
    ++i;
  }
  std::string name = Lower(sql.substr(start, i - start));
  skip();
  if (i < sql.size() && sql[i] == ';') ++i;
  skip();
  return i == sql.size() ? name : std::string();
}

}  // namespace

PgrelayCommand ParsePgrelayCommand(std::string_view sql, const routing::Classification& c) {
  PgrelayCommand cmd;
  if (c.statement_count != 1) return cmd;
  using routing::Flag;
  if (c.HasAny(Flag::kSetSession | Flag::kSetLocal | Flag::kReset)) {
    const auto& items = c.session_items();
    if (items.size() != 1) return cmd;
    const routing::SessionItem& item = items.front();
    std::string name = Lower(item.name);
    if (!name.starts_with(kPrefix)) return cmd;
    cmd.name = std::move(name);
    if (item.kind == Flag::kReset) {
      cmd.kind = PgrelayCommand::Kind::kReset;
    } else if (item.kind == Flag::kSetSession || item.kind == Flag::kSetLocal) {
      cmd.kind = PgrelayCommand::Kind::kSet;
      cmd.local = item.kind == Flag::kSetLocal;
      cmd.value = Unquote(item.value);
    }
    return cmd;
  }
  std::string name = ShowName(sql);
  if (name.starts_with(kPrefix)) {
    cmd.kind = PgrelayCommand::Kind::kShow;
    cmd.name = std::move(name);
  }
  return cmd;
}

std::vector<std::pair<std::string, std::string>> ExtractPgrelayOptions(std::string* options) {
  // Split on unescaped whitespace; a backslash takes the next character literally.
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  for (size_t i = 0; i < options->size(); ++i) {
    char ch = (*options)[i];
    if (IsSpace(ch)) {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    if (ch == '\\' && i + 1 < options->size()) ch = (*options)[++i];
    word += ch;
    in_word = true;
  }
  if (in_word) words.push_back(std::move(word));

  std::vector<std::pair<std::string, std::string>> found;
  std::vector<std::string> kept;
  for (size_t i = 0; i < words.size(); ++i) {
    std::string_view setting;
    size_t used = 1;
    const std::string& w = words[i];
    if (w == "-c" && i + 1 < words.size()) {
      setting = words[i + 1];
      used = 2;
    } else if (w.starts_with("-c") && w.size() > 2) {
      setting = std::string_view(w).substr(2);
    } else if (w.starts_with("--") && w.size() > 2) {
      setting = std::string_view(w).substr(2);
    }
    const size_t eq = setting.find('=');
    if (eq != std::string_view::npos) {
      std::string name = Lower(setting.substr(0, eq));
      for (char& ch : name) {
        if (ch == '-') ch = '_';  // PostgreSQL accepts dashes for underscores here
      }
      if (name.starts_with(kPrefix)) {
        found.emplace_back(std::move(name), std::string(setting.substr(eq + 1)));
        i += used - 1;
        continue;
      }
    }
    kept.push_back(w);
  }
  if (found.empty()) return found;
  options->clear();
  for (const std::string& w : kept) {
    if (!options->empty()) *options += ' ';
    for (char ch : w) {
      if (IsSpace(ch) || ch == '\\') *options += '\\';
      *options += ch;
    }
  }
  return found;
}

}  // namespace pgrelay::proxy
