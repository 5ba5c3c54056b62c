#include "routing/sql_scan.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace pgrelay::routing {
namespace {

#include "routing/sql_keywords.inc"

enum class Tok : uint8_t {
  kEnd,
  kIdent,        // unquoted identifier or keyword
  kQuotedIdent,  // "..." or U&"..."
  kNumber,
  kString,      // '...', E'...', B'...', X'...', N'...', U&'...', $tag$...$tag$
  kParam,       // $1
  kOperator,    // + - * / < > = ~ ! @ # % ^ & | ` ? and runs of them, and ::
  kOpenParen,   // ( or [
  kCloseParen,  // ) or ]
  kComma,
  kSemicolon,
  kDot,
  kOther,  // : and anything PostgreSQL's lexer would reject
};

struct Token {
  Tok kind = Tok::kEnd;
  std::string_view text;
  bool simple = true;  // kString: a plain '...' without backslashes or '' escapes
};

// Character classes, table-driven for the lexer's inner loops.
enum CharClass : uint8_t {
  kSpace = 1,
  kIdentStart = 2,  // letters, _, and bytes >= 0x80 (UTF-8)
  kIdentChar = 4,   // kIdentStart, digits and $
  kDigit = 8,
  kOperatorChar = 16,  // + - * / < > = ~ ! @ # % ^ & | ` ?
};
struct CharTable {
  uint8_t classes[256] = {};
  constexpr CharTable() {
    for (int c = 0; c < 256; ++c) {
      uint8_t k = 0;
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') k |= kSpace;
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80) {
        k |= kIdentStart | kIdentChar;
      }
      if (c >= '0' && c <= '9') k |= kDigit | kIdentChar;
      if (c == '$') k |= kIdentChar;
      for (char op : std::string_view("+-*/<>=~!@#%^&|`?")) {
        if (c == static_cast<unsigned char>(op)) k |= kOperatorChar;
      }
      classes[c] = k;
    }
  }
};
constexpr CharTable kChars;

bool Is(char c, CharClass k) { return (kChars.classes[static_cast<unsigned char>(c)] & k) != 0; }
bool IsSpace(char c) { return Is(c, kSpace); }
bool IsIdentStart(char c) { return Is(c, kIdentStart); }
bool IsIdentChar(char c) { return Is(c, kIdentChar); }
bool IsDigit(char c) { return Is(c, kDigit); }
bool IsOperatorChar(char c) { return Is(c, kOperatorChar); }

// [begin, end) of the keywords starting with each letter (the list is sorted).
struct KeywordIndex {
  uint16_t begin[26] = {};
  uint16_t end[26] = {};
  constexpr KeywordIndex() {
    for (size_t i = 0; i < std::size(kNonUnreservedKeywords); ++i) {
      const int letter = kNonUnreservedKeywords[i][0] - 'a';
      if (begin[letter] == end[letter]) begin[letter] = static_cast<uint16_t>(i);
      end[letter] = static_cast<uint16_t>(i + 1);
    }
  }
};
constexpr KeywordIndex kKeywordIndex;

// True if `word` (any case) is a keyword that is not unreserved.
bool IsNonUnreservedKeyword(std::string_view word) {
  if (word.empty()) return false;
  const char first = Lower(word[0]);
  if (first < 'a' || first > 'z') return false;
  const int letter = first - 'a';
  for (size_t i = kKeywordIndex.begin[letter]; i < kKeywordIndex.end[letter]; ++i) {
    if (EqualsIgnoreCase(word, kNonUnreservedKeywords[i])) return true;
  }
  return false;
}

// A tokenizer that follows PostgreSQL's scan.l closely enough to tell comments, strings, quoted
// names and dollar quotes apart (standard_conforming_strings on, as libpg_query assumes).
// Comments are skipped and handed to `on_comment` (body without delimiters).
template <typename OnComment>
class Lexer {
 public:
  Lexer(std::string_view sql, OnComment on_comment) : sql_(sql), on_comment_(on_comment) {}

  Token Next() {
    SkipSpaceAndComments();
    if (pos_ >= sql_.size()) return {Tok::kEnd, {}};
    const size_t start = pos_;
    const char c = sql_[pos_];
    const char next = Peek(1);
    if (c == '\'') return String(start, pos_, /*backslash_escapes=*/false);
    if (c == '"') return QuotedIdent(start, pos_);
    if (c == '$') {
      if (IsDigit(next)) {
        ++pos_;
        while (pos_ < sql_.size() && IsDigit(sql_[pos_])) ++pos_;
        return Make(Tok::kParam, start);
      }
      if (Token t; DollarQuote(start, &t)) return t;
      ++pos_;
      return Make(Tok::kOther, start);
    }
    if (IsIdentStart(c)) {
      // String prefixes: E'..' (backslash escapes), B'..', X'..', N'..', U&'..', U&"..".
      const char lower = Lower(c);
      if (next == '\'') {
        if (lower == 'e') return String(start, pos_ + 1, /*backslash_escapes=*/true);
        if (lower == 'b' || lower == 'x' || lower == 'n') {
          return String(start, pos_ + 1, /*backslash_escapes=*/false);
        }
      }
      if (lower == 'u' && next == '&' && Peek(2) == '\'') {
        return String(start, pos_ + 2, /*backslash_escapes=*/false);
      }
      if (lower == 'u' && next == '&' && Peek(2) == '"') return QuotedIdent(start, pos_ + 2);
      ++pos_;
      while (pos_ < sql_.size() && IsIdentChar(sql_[pos_])) ++pos_;
      return Make(Tok::kIdent, start);
    }
    if (IsDigit(c) || (c == '.' && IsDigit(next))) return Number(start);
    switch (c) {
      case '(':
      case '[':
        ++pos_;
        return Make(Tok::kOpenParen, start);
      case ')':
      case ']':
        ++pos_;
        return Make(Tok::kCloseParen, start);
      case ',':
        ++pos_;
        return Make(Tok::kComma, start);
      case ';':
        ++pos_;
        return Make(Tok::kSemicolon, start);
      case '.':
        ++pos_;
        return Make(Tok::kDot, start);
      case ':':
        pos_ += next == ':' ? 2 : 1;
        return Make(next == ':' ? Tok::kOperator : Tok::kOther, start);
      default:
        break;
    }
    if (IsOperatorChar(c)) {
      // A run of operator characters, ending before a comment start.
      while (pos_ < sql_.size() && IsOperatorChar(sql_[pos_])) {
        if (pos_ > start &&
            ((sql_[pos_] == '-' && Peek(1) == '-') || (sql_[pos_] == '/' && Peek(1) == '*'))) {
          break;
        }
        ++pos_;
      }
      return Make(Tok::kOperator, start);
    }
    ++pos_;
    return Make(Tok::kOther, start);
  }

 private:
  char Peek(size_t ahead) const { return pos_ + ahead < sql_.size() ? sql_[pos_ + ahead] : '\0'; }
  Token Make(Tok kind, size_t start) const { return {kind, sql_.substr(start, pos_ - start)}; }

  void SkipSpaceAndComments() {
    while (pos_ < sql_.size()) {
      const char c = sql_[pos_];
      if (IsSpace(c)) {
        ++pos_;
      } else if (c == '-' && Peek(1) == '-') {
        const size_t body = pos_ + 2;
        pos_ = body;
        while (pos_ < sql_.size() && sql_[pos_] != '\n' && sql_[pos_] != '\r') ++pos_;
        on_comment_(sql_.substr(body, pos_ - body));
      } else if (c == '/' && Peek(1) == '*') {
        // Comments nest.
        const size_t body = pos_ + 2;
        pos_ = body;
        int depth = 1;
        while (pos_ < sql_.size() && depth > 0) {
          if (sql_[pos_] == '/' && Peek(1) == '*') {
            ++depth;
            pos_ += 2;
          } else if (sql_[pos_] == '*' && Peek(1) == '/') {
            --depth;
            pos_ += 2;
          } else {
            ++pos_;
          }
        }
        if (depth > 0) unterminated_ = true;
        const size_t end = depth == 0 ? pos_ - 2 : pos_;
        on_comment_(sql_.substr(body, end - body));
      } else {
        return;
      }
    }
  }

  // A quoted string whose opening quote is at `quote`; '' is a quote inside it, and so is \'
  // in E'' strings. Unterminated strings run to the end (the parser reports them).
  Token String(size_t start, size_t quote, bool backslash_escapes) {
    bool simple = !backslash_escapes && quote == start;
    pos_ = quote + 1;
    while (pos_ < sql_.size()) {
      const char c = sql_[pos_];
      if (c == '\\') {
        simple = false;
        pos_ += backslash_escapes ? 2 : 1;
      } else if (c == '\'') {
        if (Peek(1) == '\'') {
          simple = false;
          pos_ += 2;
        } else {
          ++pos_;
          Token t = Make(Tok::kString, start);
          t.simple = simple;
          return t;
        }
      } else {
        ++pos_;
      }
    }
    pos_ = sql_.size();
    unterminated_ = true;
    Token t = Make(Tok::kString, start);
    t.simple = false;
    return t;
  }

  Token QuotedIdent(size_t start, size_t quote) {
    pos_ = quote + 1;
    while (pos_ < sql_.size()) {
      if (sql_[pos_] == '"') {
        if (Peek(1) == '"') {
          pos_ += 2;
          continue;
        }
        ++pos_;
        return Make(Tok::kQuotedIdent, start);
      }
      ++pos_;
    }
    unterminated_ = true;
    return Make(Tok::kQuotedIdent, start);
  }

  // $tag$ ... $tag$ at `start`; false (pos_ unchanged) if no dollar-quote opens there.
  bool DollarQuote(size_t start, Token* out) {
    size_t i = start + 1;
    if (i < sql_.size() && IsIdentStart(sql_[i])) {
      ++i;
      while (i < sql_.size() && IsIdentChar(sql_[i]) && sql_[i] != '$') ++i;
    }
    if (i >= sql_.size() || sql_[i] != '$') return false;
    const std::string_view delimiter = sql_.substr(start, i + 1 - start);
    const size_t close = sql_.find(delimiter, i + 1);
    if (close == std::string_view::npos) unterminated_ = true;
    pos_ = close == std::string_view::npos ? sql_.size() : close + delimiter.size();
    *out = Make(Tok::kString, start);
    out->simple = false;
    return true;
  }

  Token Number(size_t start) {
    while (pos_ < sql_.size() && IsDigit(sql_[pos_])) ++pos_;
    if (pos_ < sql_.size() && sql_[pos_] == '.' && Peek(1) != '.') {
      ++pos_;
      while (pos_ < sql_.size() && IsDigit(sql_[pos_])) ++pos_;
    }
    if (pos_ < sql_.size() && (sql_[pos_] == 'e' || sql_[pos_] == 'E')) {
      size_t i = pos_ + 1;
      if (i < sql_.size() && (sql_[i] == '+' || sql_[i] == '-')) ++i;
      if (i < sql_.size() && IsDigit(sql_[i])) {
        pos_ = i;
        while (pos_ < sql_.size() && IsDigit(sql_[pos_])) ++pos_;
      }
    }
    // PostgreSQL 15 rejects "123abc" (trailing junk); here it is a number then an identifier,
    // a shape the pre-check rejects.
    return Make(Tok::kNumber, start);
  }

  std::string_view sql_;
  OnComment on_comment_;
  size_t pos_ = 0;

 public:
  // An unterminated comment, string, quoted name or dollar quote was seen (a parse error).
  bool unterminated() const { return unterminated_; }

 private:
  bool unterminated_ = false;
};

template <typename OnComment>
Lexer<OnComment> MakeLexer(std::string_view sql, OnComment on_comment) {
  return Lexer<OnComment>(sql, on_comment);
}

// Finds pgrelay:primary / pgrelay:replica (any case) as words in a comment body.
Hint HintInComment(std::string_view body) {
  Hint hint = Hint::kNone;
  constexpr std::string_view kPrefix = "pgrelay:";
  for (size_t i = 0; i + kPrefix.size() <= body.size(); ++i) {
    if (!EqualsIgnoreCase(body.substr(i, kPrefix.size()), kPrefix)) continue;
    if (i > 0 && IsIdentChar(body[i - 1])) continue;
    const size_t word = i + kPrefix.size();
    size_t end = word;
    while (end < body.size() && IsIdentChar(body[end])) ++end;
    const std::string_view value = body.substr(word, end - word);
    if (EqualsIgnoreCase(value, "primary")) return Hint::kPrimary;
    if (EqualsIgnoreCase(value, "replica")) hint = Hint::kReplica;
  }
  return hint;
}

// True if "pgrelay:" (any case) occurs in `text`: finds each ':' (rare in SQL) with memchr.
bool MentionsPgrelay(std::string_view text) {
  constexpr std::string_view kWord = "pgrelay";
  const char* data = text.data();
  const char* end = data + text.size();
  for (const char* p = data + kWord.size(); p < end;) {
    const void* hit = std::memchr(p, ':', static_cast<size_t>(end - p));
    if (hit == nullptr) return false;
    const char* colon = static_cast<const char*>(hit);
    if (colon - data >= static_cast<ptrdiff_t>(kWord.size()) &&
        EqualsIgnoreCase(std::string_view(colon - kWord.size(), kWord.size()), kWord)) {
      return true;
    }
    p = colon + 1;
  }
  return false;
}

void IgnoreComment(std::string_view) {}

// The recursive-descent pre-check over the token stream.
class Precheck {
 public:
  explicit Precheck(std::string_view sql) : lexer_(sql, &IgnoreComment) { Advance(); }

  // Returns the transaction kind (kBegin etc.) for a transaction statement, kNone for a SELECT
  // or a plain write (*write set); false if none matches exactly.
  bool Run(bool selects_allowed, TxnKind* txn, bool* write) {
    if (tok_.kind != Tok::kIdent) return false;
    if (IsWord("begin")) {
      *txn = TxnKind::kBegin;
      Advance();
      OptionalWord("work") || OptionalWord("transaction");
    } else if (IsWord("start")) {
      *txn = TxnKind::kBegin;
      Advance();
      if (!OptionalWord("transaction")) return false;
    } else if (IsWord("commit") || IsWord("end")) {
      *txn = TxnKind::kCommit;
      Advance();
      OptionalWord("work") || OptionalWord("transaction");
    } else if (IsWord("rollback") || IsWord("abort")) {
      *txn = TxnKind::kRollback;
      Advance();
      OptionalWord("work") || OptionalWord("transaction");
    } else if (IsWord("select") && selects_allowed) {
      *txn = TxnKind::kNone;
      Advance();
      if (!Select()) return false;
    } else if (IsWord("insert") && selects_allowed) {
      *txn = TxnKind::kNone;
      *write = true;
      Advance();
      if (!Insert()) return false;
    } else if (IsWord("update") && selects_allowed) {
      *txn = TxnKind::kNone;
      *write = true;
      Advance();
      if (!Update()) return false;
    } else if (IsWord("delete") && selects_allowed) {
      *txn = TxnKind::kNone;
      *write = true;
      Advance();
      if (!OptionalWord("from") || !Name()) return false;
      if (OptionalWord("where") && !Conditions()) return false;
    } else {
      return false;
    }
    if (tok_.kind == Tok::kSemicolon) Advance();
    return tok_.kind == Tok::kEnd && !lexer_.unterminated();
  }

 private:
  void Advance() { tok_ = lexer_.Next(); }
  bool IsWord(std::string_view lower) const {
    return tok_.kind == Tok::kIdent && EqualsIgnoreCase(tok_.text, lower);
  }
  bool OptionalWord(std::string_view lower) {
    if (!IsWord(lower)) return false;
    Advance();
    return true;
  }
  // A plain identifier that the grammar can only take as a name.
  bool Name() {
    if (tok_.kind != Tok::kIdent || IsNonUnreservedKeyword(tok_.text)) return false;
    for (char c : tok_.text) {
      if (static_cast<unsigned char>(c) >= 0x80 || c == '$') return false;
    }
    Advance();
    return true;
  }
  bool Literal() {
    if (tok_.kind == Tok::kNumber || (tok_.kind == Tok::kString && tok_.simple)) {
      Advance();
      return true;
    }
    return false;
  }
  bool Integer() {
    if (tok_.kind != Tok::kNumber) return false;
    for (char c : tok_.text) {
      if (!IsDigit(c)) return false;
    }
    Advance();
    return true;
  }
  bool Select() {
    // Select list.
    do {
      if (tok_.kind == Tok::kOperator && tok_.text == "*") {
        Advance();
      } else if (!Name() && !Literal()) {
        return false;
      }
    } while (tok_.kind == Tok::kComma && (Advance(), true));
    if (OptionalWord("from")) {
      if (!Name()) return false;
      if (OptionalWord("where") && !Conditions()) return false;
      if (OptionalWord("order")) {
        if (!OptionalWord("by")) return false;
        do {
          if (!Name()) return false;
          OptionalWord("asc") || OptionalWord("desc");
        } while (tok_.kind == Tok::kComma && (Advance(), true));
      }
    }
    if (OptionalWord("limit") && !Integer()) return false;
    if (OptionalWord("offset") && !Integer()) return false;
    return true;
  }
  // name op value [AND ...]
  bool Conditions() {
    do {
      if (!Name() || !ComparisonOperator()) return false;
      if (tok_.kind == Tok::kParam) {
        Advance();
      } else if (!Literal()) {
        return false;
      }
    } while (OptionalWord("and"));
    return true;
  }
  // A constant of a row value or an UPDATE operand: number, -number, 'string', $n,
  // CURRENT_TIMESTAMP, CURRENT_DATE (SQL value functions the parser folds, not function calls).
  bool Value() {
    if (tok_.kind == Tok::kParam) {
      Advance();
      return true;
    }
    if (tok_.kind == Tok::kOperator && tok_.text == "-") {
      Advance();
      return tok_.kind == Tok::kNumber && (Advance(), true);
    }
    if (IsWord("current_timestamp") || IsWord("current_date")) {
      Advance();
      return true;
    }
    return Literal();
  }
  // (item, ...) with `item` one of the element parsers above.
  bool ParenthesizedList(bool (Precheck::*item)()) {
    if (tok_.kind != Tok::kOpenParen) return false;
    Advance();
    do {
      if (!(this->*item)()) return false;
    } while (tok_.kind == Tok::kComma && (Advance(), true));
    if (tok_.kind != Tok::kCloseParen) return false;
    Advance();
    return true;
  }
  // INTO name [(name, ...)] VALUES (value, ...) [, (value, ...) ...]
  bool Insert() {
    if (!OptionalWord("into") || !Name()) return false;
    if (tok_.kind == Tok::kOpenParen && !ParenthesizedList(&Precheck::Name)) return false;
    if (!OptionalWord("values")) return false;
    do {
      if (!ParenthesizedList(&Precheck::Value)) return false;
    } while (tok_.kind == Tok::kComma && (Advance(), true));
    return true;
  }
  // name SET name = operand [+|- operand], ... [WHERE ...]
  bool Update() {
    if (!Name() || !OptionalWord("set")) return false;
    do {
      if (!Name() || tok_.kind != Tok::kOperator || tok_.text != "=") return false;
      Advance();
      if (!Name() && !Value()) return false;
      if (tok_.kind == Tok::kOperator && (tok_.text == "+" || tok_.text == "-")) {
        Advance();
        if (!Name() && !Value()) return false;
      }
    } while (tok_.kind == Tok::kComma && (Advance(), true));
    if (OptionalWord("where") && !Conditions()) return false;
    return true;
  }
  bool ComparisonOperator() {
    if (tok_.kind != Tok::kOperator) return false;
    const std::string_view op = tok_.text;
    if (op == "=" || op == "<>" || op == "!=" || op == "<" || op == ">" || op == "<=" ||
        op == ">=") {
      Advance();
      return true;
    }
    return false;
  }

  Lexer<void (*)(std::string_view)> lexer_;
  Token tok_;
};

}  // namespace

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view lower) {
  if (a.size() != lower.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != lower[i]) return false;
  }
  return true;
}

Hint FindCommentHint(std::string_view sql) {
  if (!MentionsPgrelay(sql)) return Hint::kNone;
  Hint hint = Hint::kNone;
  auto lexer = MakeLexer(sql, [&hint](std::string_view body) {
    const Hint found = HintInComment(body);
    if (found == Hint::kPrimary || (found == Hint::kReplica && hint == Hint::kNone)) {
      hint = found;
    }
  });
  while (lexer.Next().kind != Tok::kEnd) {
  }
  return hint;
}

bool PrecheckSimple(std::string_view sql, bool simple_operators_safe, Classification* out) {
  TxnKind txn = TxnKind::kNone;
  bool write = false;
  Precheck precheck(sql);
  if (!precheck.Run(simple_operators_safe, &txn, &write)) return false;
  *out = Classification{};
  out->txn = txn;
  out->statement_count = 1;
  if (write) {
    out->target = Target::kPrimary;
    out->Set(Flag::kWrite);
  }
  return true;
}

size_t EstimateParseDepth(std::string_view sql) {
  struct Level {
    size_t ops = 0;    // operators and keywords since the last comma
    size_t chain = 0;  // UNION / INTERSECT / EXCEPT / JOIN: trees that commas do not end
  };
  std::vector<Level> levels(1);
  size_t depth = 1;  // sum over levels of 1 + ops + chain
  size_t max_depth = 1;
  Lexer<void (*)(std::string_view)> lexer(sql, &IgnoreComment);
  for (Token t = lexer.Next(); t.kind != Tok::kEnd; t = lexer.Next()) {
    switch (t.kind) {
      case Tok::kOpenParen:
        levels.emplace_back();
        ++depth;
        break;
      case Tok::kCloseParen:
        if (levels.size() > 1) {
          depth -= 1 + levels.back().ops + levels.back().chain;
          levels.pop_back();
        }
        break;
      case Tok::kComma:
        depth -= levels.back().ops;
        levels.back().ops = 0;
        break;
      case Tok::kSemicolon:
        levels.resize(1);
        levels[0] = Level{};
        depth = 1;
        break;
      case Tok::kOperator:
        ++levels.back().ops;
        ++depth;
        break;
      case Tok::kIdent:
        if (EqualsIgnoreCase(t.text, "union") || EqualsIgnoreCase(t.text, "intersect") ||
            EqualsIgnoreCase(t.text, "except") || EqualsIgnoreCase(t.text, "join")) {
          ++levels.back().chain;
          ++depth;
        } else if (IsNonUnreservedKeyword(t.text) || EqualsIgnoreCase(t.text, "at")) {
          ++levels.back().ops;
          ++depth;
        }
        break;
      default:
        break;
    }
    max_depth = std::max(max_depth, depth);
  }
  return max_depth;
}

}  // namespace pgrelay::routing
