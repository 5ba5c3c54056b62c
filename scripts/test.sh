#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run):
#   scripts/test.sh [ctest args...]      e.g. scripts/test.sh -L unit    scripts/test.sh -R psql
# Installs missing dependencies, builds build/asan (ASan + UBSan) and build/release (for the
# allocation test), starts a private test cluster
# (scripts/cluster.sh in ${PGRELAY_TEST_CLUSTER_DIR:-/tmp/pgrelay-test-cluster}), runs ctest and
# always stops and removes that cluster on exit. Exits with ctest's status.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/install-deps.sh

echo "test.sh: configuring and building build/asan"
scripts/build.sh asan build/asan
# The release binary too: test_alloc.py counts its allocations (ASan has its own allocator).
echo "test.sh: building build/release"
scripts/build.sh release build/release
export PGRELAY_RELEASE_BIN="$ROOT/build/release/proxy/pgrelay"

export PGRELAY_CLUSTER_DIR="${PGRELAY_TEST_CLUSTER_DIR:-/tmp/pgrelay-test-cluster}"
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  local rc=$?
  "$ROOT/scripts/cluster.sh" stop --destroy --dir "$PGRELAY_CLUSTER_DIR" ||
    echo "test.sh: warning: could not stop/remove the test cluster in $PGRELAY_CLUSTER_DIR" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start from a clean cluster: a leftover from an interrupted run may hold a changed topology.
scripts/cluster.sh stop --destroy --dir "$PGRELAY_CLUSTER_DIR"
scripts/cluster.sh start --dir "$PGRELAY_CLUSTER_DIR"
export PGRELAY_CLUSTER_ENV="$PGRELAY_CLUSTER_DIR/cluster.env"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

set +e
ctest --test-dir build/asan --output-on-failure "$@"
status=$?
set -e
echo "test.sh: ctest exited with status $status"
exit "$status"
