#!/bin/sh
# make test-scale needs PgBouncer (the Debian package) and PostgreSQL's psql client; install them
# when missing. The primary and standby of the replica test use the PostgreSQL binaries that ship
# with the pgserver package, so no PostgreSQL server package is needed.
set -e
missing=""
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing="$missing pgbouncer"
[ -x /usr/lib/postgresql/15/bin/psql ] || command -v psql >/dev/null 2>&1 || missing="$missing postgresql-client"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "make test-scale needs:$missing (apt-get install -y$missing, as root)" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
