#!/usr/bin/env bash
# Install what `make test-scale` needs from Debian's packages, unless it is already there: PgBouncer.
# The primary, the standby and psql come with the pgserver package's PostgreSQL binaries.
set -euo pipefail
command -v pgbouncer >/dev/null 2>&1 && exit 0
[ -x /usr/sbin/pgbouncer ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "test-scale: installing pgbouncer" >&2
if ! $sudo apt-get install -y --no-install-recommends pgbouncer; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends pgbouncer
fi
