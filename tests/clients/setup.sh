#!/usr/bin/env bash
# Installs what the client compatibility suite (tests/compat) runs: Java and
# Debian's PostgreSQL JDBC driver, Node.js with node-postgres (versions from
# tests/clients/node/package-lock.json), and a Python virtual environment in
# target/clients/venv with psycopg 3, asyncpg and SQLAlchemy (versions from
# tests/clients/python/requirements.txt). Safe to run again; installs only
# what is missing. Debian packages need root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/../.."

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

debs=()
command -v java >/dev/null 2>&1 || debs+=(default-jre-headless)
[ -f /usr/share/java/postgresql.jar ] || debs+=(libpostgresql-jdbc-java)
command -v node >/dev/null 2>&1 || debs+=(nodejs)
command -v npm >/dev/null 2>&1 || debs+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || debs+=(python3-venv)
if [ "${#debs[@]}" -gt 0 ]; then
  echo "==> installing ${debs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${debs[@]}"
fi

venv=target/clients/venv
if [ ! -x "$venv/bin/python" ]; then
  echo "==> python venv $venv"
  mkdir -p target/clients
  python3 -m venv "$venv"
fi
echo "==> pip install -r tests/clients/python/requirements.txt"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/clients/python/requirements.txt

if [ -f tests/clients/node/package-lock.json ]; then
  echo "==> npm ci (tests/clients/node)"
  (cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "==> client programs ready: java $(java -version 2>&1 | head -n 1), node $(node --version), $("$venv/bin/python" --version)"
