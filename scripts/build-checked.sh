#!/usr/bin/env bash
# `swift build "$@"`, failing when the compiler warns about our own code (Sources/, Plugins/,
# Tests/); dependencies' warnings are theirs. A fresh build (CI's) compiles every file, so
# every warning shows; an incremental one shows those of the files it recompiled.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .build
log=.build/build-output.txt
${SWIFT:-swift} build "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"
root=$(pwd)
warnings=$(grep -E "^(${root}/)?(Sources|Plugins|Tests)/[^:]+:[0-9]+:[0-9]+: warning:" "$log" | sort -u)
if [ -n "$warnings" ]; then
  echo "error: the build warns about our own code; fix these (see $log):" >&2
  echo "$warnings" >&2
  exit 1
fi
