#!/usr/bin/env bash
# The services tests/test_services_integration.py needs, on loopback: PostgreSQL (trust auth for
# user postgres) on 127.0.0.1:5432, Redis on 127.0.0.1:6379, /usr/bin/chromium for the UI
# checks, and Label Studio on 127.0.0.1:8089 (.ci/label-studio.sh). Idempotent: starts only what is
# not answering, installs only what is missing.
set -euo pipefail

# shellcheck source=.ci/service-helpers.sh
. "$(dirname "$0")/service-helpers.sh"

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "services: missing $*, and not root: install it (apt-get install $*)" >&2
    exit 1
  fi
  # Lists first only when they are empty (a fresh image); recommends would add avahi, cups and more.
  if ! apt-cache show "$@" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  say "PostgreSQL answering on 127.0.0.1:5432"
else
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  version=$(ls /etc/postgresql | sort -V | tail -1)
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for PostgreSQL 30 pg_isready -q -h 127.0.0.1 -p 5432
fi

# Redis
if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; then
  say "Redis answering on 127.0.0.1:6379"
else
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis 30 sh -c '[ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ]'
fi

# Chromium (driven by Playwright with executable_path=/usr/bin/chromium; no browser download).
if [ -x /usr/bin/chromium ] && [ -d /usr/share/fonts/truetype/liberation ]; then
  say "Chromium present"
else
  say "installing chromium"
  apt_install chromium fonts-liberation   # fonts: readable text in the screenshots
fi

# Label Studio (tests/test_labelling.py): its own virtualenv, installed and started when missing.
bash "$(dirname "$0")/label-studio.sh"
