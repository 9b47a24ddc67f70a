#!/usr/bin/env bash
# Fetches the openspf RFC 7208 test suite (test/rfc7208-tests.yml of the pyspf 2.0.14 source
# distribution on PyPI) into .cache/spf/rfc7208-tests.yml. Does nothing when it is already there.
# `pip download` only fetches the file; it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.0.14
DIR=.cache/spf
OUT=$DIR/rfc7208-tests.yml
PYTHON=${PYTHON:-/usr/bin/python3}
[ -s "$OUT" ] && exit 0
mkdir -p "$DIR"
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "installing: python3-pip"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null
fi
SDIST=$DIR/pyspf-$VERSION.tar.gz
if [ ! -s "$SDIST" ]; then
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: -d "$DIR" "pyspf==$VERSION"
fi
tar -xzOf "$SDIST" "pyspf-$VERSION/test/rfc7208-tests.yml" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "fetched $OUT"
