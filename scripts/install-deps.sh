#!/usr/bin/env bash
# Installs what pgrelay's build, tests and demo need (Debian 12). Installs only the missing
# packages; runs `apt-get update` once, and only when something is missing. Non-interactive.
# It never starts, stops or depends on Debian's system PostgreSQL cluster: tests use
# scripts/cluster.sh, which runs its own servers under its own directory.
set -euo pipefail

PACKAGES=(
  build-essential cmake ccache pkg-config
  libboost1.81-dev libboost-json1.81-dev
  libpq-dev libyaml-cpp-dev libpg-query-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  postgresql-15 postgresql-client-15 postgresql-contrib
  python3-psycopg python3-pytest python3-yaml
  procps iproute2 curl strace prometheus etcd-server
  openjdk-17-jdk-headless libpostgresql-jdbc-java
)

installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps.sh: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps.sh: installing: ${missing[*]}"
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
# Wait for the dpkg lock rather than fail if another apt run (e.g. a colleague's) holds it.
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y -q \
  --no-install-recommends "${missing[@]}"

still=()
for p in "${missing[@]}"; do installed "$p" || still+=("$p"); done
if [[ ${#still[@]} -ne 0 ]]; then
  echo "install-deps.sh: still missing after install: ${still[*]}" >&2
  exit 1
fi
echo "install-deps.sh: done"
