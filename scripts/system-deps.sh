#!/usr/bin/env bash
# Install the system packages tests need (Debian's chromium, redis-server, postgresql, systemd's tools,
# prometheus's promtool, dovecot-imapd) when missing.
# Under CI=true a missing package that cannot be installed fails the run; locally its tests skip.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v redis-server >/dev/null || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v systemd-analyze >/dev/null || need+=(systemd)     # `systemd-analyze verify` of deploy/*.service
command -v promtool >/dev/null || need+=(prometheus)         # `promtool test rules` of deploy/alerts.yml
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)            # a real IMAP server for the mailbox intake tests
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
elif [ "${CI:-}" = true ]; then
  echo "missing system packages and cannot install them: ${need[*]}" >&2
  exit 1
else
  echo "missing system packages (their tests will skip): ${need[*]}"
fi
