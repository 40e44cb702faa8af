#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing; the tests start their own server on a free port.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "error: redis-server is missing; install it (apt-get install -y redis-server) or run as root" >&2
  exit 1
fi
echo "installing redis-server" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq redis-server >/dev/null
# The package starts a system-wide server on 6379; the tests never use it, so stop it.
(service redis-server stop || true) >/dev/null 2>&1
command -v redis-server >/dev/null
