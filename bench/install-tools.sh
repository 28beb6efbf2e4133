#!/usr/bin/env bash
# Install the load tools `make bench` needs from Debian's packages, unless they are already there:
# wrk (HTTP load) and pgbench (from postgresql-client).
set -euo pipefail
packages=()
command -v wrk >/dev/null 2>&1 || packages+=(wrk)
command -v pgbench >/dev/null 2>&1 || packages+=(postgresql-client)
[ ${#packages[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "bench: installing ${packages[*]}" >&2
if ! $sudo apt-get install -y --no-install-recommends "${packages[@]}"; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${packages[@]}"
fi
