// Lexical helpers of the classifier that need no parse tree: comment hints, the pre-check that
// classifies the simplest statements without the parser, and the bound on parse-tree depth that
// keeps libpg_query's recursive output off deep trees. Stateless functions; thread-safe.
#pragma once

#include <cstddef>
#include <string_view>

#include "routing/classification.h"

namespace pgrelay::routing {

// The hint in the comments of `sql` (/* pgrelay:primary */, -- pgrelay:replica; any case, with
// other words around it). Text in strings, quoted names and dollar quotes is not a comment.
// If comments say both, primary wins.
Hint FindCommentHint(std::string_view sql);

// Classifies `sql` without the parser if it is one of the simplest statements, whose
// classification is certain from its tokens alone:
//   BEGIN | START TRANSACTION | COMMIT | END | ROLLBACK | ABORT   [WORK | TRANSACTION]
//   SELECT item, ... [FROM name [WHERE name op value [AND ...]] [ORDER BY name [ASC|DESC], ...]]
//          [LIMIT n] [OFFSET n]
//   INSERT INTO name [(name, ...)] VALUES (row value, ...) [, (...) ...]
//   UPDATE name SET name = operand [+|- operand], ... [WHERE name op value [AND ...]]
//   DELETE FROM name [WHERE name op value [AND ...]]
// with items * | name | number | 'string', op one of = <> != < > <= >=, values number | 'string'
// | $n, row values and operands also -number, CURRENT_TIMESTAMP, CURRENT_DATE (and operands a
// name), names plain unquoted identifiers that are not reserved keywords, an optional `;`, and
// comments anywhere. The three writes are plain writes (kWrite, to the primary): no function
// call, subquery, RETURNING or ON CONFLICT. `simple_operators_safe` is
// FunctionCatalog::simple_operators_safe(): if a user overloaded one of those operators (or + -)
// with a volatile function, only transaction control is pre-checked.
// Returns false (and leaves *out alone) for anything else. The result equals the parser's.
bool PrecheckSimple(std::string_view sql, bool simple_operators_safe, Classification* out);

// An upper bound, in "levels", of how deep libpg_query's parse tree of `sql` can be: nesting of
// brackets plus the operators and keywords that chain within one list element. libpg_query
// writes its output recursively (about 130 bytes of stack per level); strings whose bound is
// above kMaxParseDepth are not parsed (they go to the primary, flagged kTooDeep).
size_t EstimateParseDepth(std::string_view sql);
// ASCII lower case of c; whether `a` equals `lower` (already lower case) ignoring ASCII case.
char Lower(char c);
bool EqualsIgnoreCase(std::string_view a, std::string_view lower);

constexpr size_t kMaxParseDepth = 4000;
// Strings up to this size have fewer tokens than kMaxParseDepth: no estimate needed.
constexpr size_t kParseDepthCheckMinSize = 4000;

}  // namespace pgrelay::routing
