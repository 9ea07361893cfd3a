#!/usr/bin/env bash
# Bounded soak of the release levee binary: open-loop overload (1.5x capacity), backend
# flaps, a zone failure and recovery, and config reloads every few seconds, then checks
# that no request was lost, levee is idle again and its memory did not grow.
# See examples/soak.rs for what runs and what is checked.
#
#   scripts/soak.sh                 # 10 minutes
#   SOAK_SECS=60 scripts/soak.sh    # 1 minute
#   SOAK_FACTOR=2 scripts/soak.sh   # offer 2x capacity instead of 1.5x
#
# Exit status: 0 when every check passed. Everything runs on 127.0.0.1 and stops by
# itself: the whole run is bounded by SOAK_SECS plus 5 minutes for building and the
# final checks.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECS="${SOAK_SECS:-600}"
case "$SOAK_SECS" in
  ''|*[!0-9]*) echo "SOAK_SECS must be a number of seconds" >&2; exit 2 ;;
esac
export SOAK_SECS

cargo build --release --bin levee --example soak
export LEVEE_BIN="$PWD/target/release/levee"
exec timeout --kill-after=10 "$((SOAK_SECS + 300))" \
  cargo run --release --quiet --example soak
