#!/usr/bin/env bash
# Runs the statement classifier over every statement of PostgreSQL 15's own regression suite
# (src/test/regress/sql/*.sql of Debian's postgresql-15 source package) and fails if it ever
# routes a writing statement to a replica (see routing/tools/regress_check.cc for the oracle),
# or if the cache or the parser-free pre-check disagree with the parser. Also a crash test:
# the tool runs under the sanitizers of the chosen build.
#
#   scripts/check_regress_corpus.sh [BUILD_DIR]          default build/asan
#
# Environment:
#   PGRELAY_REGRESS_SQL_DIR  use this directory of *.sql instead of fetching the source
#   PGRELAY_REGRESS_CACHE    where the fetched source is kept (default /tmp/pgrelay-regress-src)
#   PGRELAY_CLUSTER_ENV      a cluster.env (scripts/cluster.sh); if its primary answers, the
#                            server's volatile functions widen the oracle
# The source is fetched with `apt-get source` against a private apt state under the cache
# directory (deb-src lines of the system's Debian suites), so the system's apt setup is not
# touched. Nothing fetched is committed. Exits 0 on success, 1 on a misclassification, 2 if the
# suite cannot be fetched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${1:-$ROOT/build/asan}"
CACHE="${PGRELAY_REGRESS_CACHE:-/tmp/pgrelay-regress-src}"

fetch_suite() {
  local apt="$CACHE/apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d"
  : >"$apt/sources.list"
  # deb-src twins of the system's Debian suites; -security sources are often not mirrored, so
  # the plain suite is enough (any 15.x regression suite serves).
  local codename
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
  cat >"$apt/sources.list.d/pgrelay-src.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/sources.list.d"
              -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1
              -o APT::Sandbox::User=root -q)
  echo "check_regress_corpus.sh: fetching the postgresql-15 source package (deb-src)" >&2
  if ! apt-get "${opts[@]}" update >"$CACHE/apt-update.log" 2>&1; then
    echo "check_regress_corpus.sh: apt-get update of the deb-src lists failed; see $CACHE/apt-update.log" >&2
    return 1
  fi
  (cd "$CACHE" && apt-get "${opts[@]}" source --download-only "postgresql-15/$codename") \
    >"$CACHE/apt-source.log" 2>&1 || {
    echo "check_regress_corpus.sh: apt-get source postgresql-15 failed (no deb-src for it?); see $CACHE/apt-source.log" >&2
    return 1
  }
  local orig
  orig="$(ls "$CACHE"/postgresql-15_*.orig.tar.* 2>/dev/null | head -n1)"
  [[ -n "$orig" ]] || { echo "check_regress_corpus.sh: no orig tarball downloaded" >&2; return 1; }
  # Only the regression SQL is needed: no dpkg-source, no patches (Debian does not patch it).
  tar -xf "$orig" -C "$CACHE" --wildcards '*/src/test/regress/sql/*.sql'
}

SQL_DIR="${PGRELAY_REGRESS_SQL_DIR:-}"
if [[ -z "$SQL_DIR" ]]; then
  mkdir -p "$CACHE"
  SQL_DIR="$(ls -d "$CACHE"/postgresql-15*/src/test/regress/sql 2>/dev/null | head -n1 || true)"
  if [[ -z "$SQL_DIR" ]]; then
    fetch_suite || exit 2
    SQL_DIR="$(ls -d "$CACHE"/postgresql-15*/src/test/regress/sql | head -n1)"
  fi
fi
count="$(ls "$SQL_DIR"/*.sql 2>/dev/null | wc -l)"
[[ "$count" -gt 0 ]] || { echo "check_regress_corpus.sh: no *.sql in $SQL_DIR" >&2; exit 2; }
echo "check_regress_corpus.sh: $count files in $SQL_DIR"

cmake --build "$BUILD_DIR" --target classifier_regress_check -j1 >/dev/null
TOOL="$BUILD_DIR/routing/classifier_regress_check"

args=()
if [[ -n "${PGRELAY_CLUSTER_ENV:-}" && -r "$PGRELAY_CLUSTER_ENV" ]]; then
  # shellcheck disable=SC1090
  source "$PGRELAY_CLUSTER_ENV"
  volatile_list="$CACHE/volatile-functions.txt"
  if psql -X -q -At -h "$PGRELAY_PG_HOST" -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_SUPERUSER" \
       -d "$PGRELAY_PG_DATABASE" -c "SELECT DISTINCT proname FROM pg_proc WHERE provolatile = 'v'" \
       >"$volatile_list" 2>/dev/null; then
    echo "check_regress_corpus.sh: oracle widened by $(wc -l <"$volatile_list") volatile functions of the cluster"
    args+=(--volatile-list "$volatile_list")
  fi
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
"$TOOL" "${args[@]}" "$SQL_DIR"/*.sql
