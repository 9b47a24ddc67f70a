#!/usr/bin/env bash
# Installs the Debian packages Sluice's build, tests or benchmark need, when missing.
# Usage: scripts/install-deps.sh build|run|test|bench
set -euo pipefail
what=${1:-test}
# The C libraries the build links (libspf2, libunbound, libopendkim, libopendmarc, libmilter, SQLite, OpenSSL, libxcrypt)
# and the Public Suffix List, then what each use needs.
pkgs=(libspf2-dev libunbound-dev libopendkim-dev libopendmarc-dev libmilter-dev libsqlite3-dev libssl-dev libcrypt-dev publicsuffix pkg-config)
case "$what" in
  build) ;;
  run)   pkgs+=(swaks) ;;
  test)  pkgs+=(swaks postfix openssl python3-pytest python3-aiosmtpd python3-dnslib python3-yaml python3-pip python3-dkim opendkim opendkim-tools spamassassin spamc spamass-milter rspamd python3-milter miltertest procps postgresql) ;;
  bench) pkgs+=(postfix python3 python3-dnslib procps postgresql python3-pytest) ;;
  *) echo "usage: $0 build|run|test|bench" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v swift >/dev/null 2>&1; then
  echo "swift is not on PATH: install the Swift 6 toolchain first" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  # policy-rc.d keeps the postfix package from starting the system mail service.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
