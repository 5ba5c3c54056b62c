#!/usr/bin/env bash
# Configures and builds pgrelay; the one build recipe the tests, CI and the Docker image share.
#   scripts/build.sh asan    [DIR]   RelWithDebInfo + ASan/UBSan, with tests (default DIR build/asan)
#   scripts/build.sh release [DIR]   Release, pgrelay only (default DIR build/release)
# Uses ccache when it is installed. Builds with 2 jobs unless PGRELAY_BUILD_JOBS says otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

kind=${1:-asan}
jobs=${PGRELAY_BUILD_JOBS:-2}
case "$kind" in
  asan)
    dir=${2:-build/asan}
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGRELAY_SANITIZE=ON
    cmake --build "$dir" -j"$jobs"
    ;;
  release)
    dir=${2:-build/release}
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPGRELAY_BUILD_TESTS=OFF
    cmake --build "$dir" -j"$jobs" --target pgrelay
    ;;
  *)
    echo "usage: scripts/build.sh asan|release [DIR]" >&2
    exit 2
    ;;
esac
