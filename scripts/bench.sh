#!/usr/bin/env bash
# Runs the load benchmark (benches/load.rs): levee against HAProxy, nginx and a direct
# connection. Raises the open-files limit first, so the memory section can hold
# 10,000 idle client connections (it needs 11,024 descriptors; HAProxy asks for two per
# connection and is started with `no strict-limits` when the limit is lower).
#
#   scripts/bench.sh              # full run, about 25 minutes
#   scripts/bench.sh --quick      # CI smoke, under 2 minutes
#   scripts/bench.sh --only levee,haproxy --sections raw
#   scripts/bench.sh --sections fresh,zonefail --only levee,haproxy,nginx
#   scripts/bench.sh --sections grpc --only levee,nginx,direct
#
# The results are printed as Markdown tables and written as JSON to
# target/bench-load.json. haproxy, nginx, wrk and h2load (nghttp2-client) come from
# Debian (scripts/setup.sh --all installs them); a missing one is skipped with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

want=65536
hard=$(ulimit -Hn)
if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$want" ]; then
  want=$hard
fi
ulimit -n "$want" 2>/dev/null || echo "bench.sh: could not raise the open-files limit (now $(ulimit -n))" >&2
if [ "$(ulimit -n)" != "unlimited" ] && [ "$(ulimit -n)" -lt 11024 ]; then
  echo "bench.sh: open-files limit $(ulimit -n) < 11024: the memory section will be skipped" >&2
fi

for tool in haproxy nginx wrk h2load; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
    echo "bench.sh: $tool not installed (scripts/setup.sh --all): its part is skipped" >&2
done

mkdir -p target
# `cargo bench` builds levee's binary in release (the bench profile) before the bench;
# the "hyper-floor" and "httparse-floor" targets (examples/hyper_floor.rs,
# examples/httparse_floor.rs) and the grpc section's backend
# (examples/grpc_backend.rs) are built here.
cargo build --release --example hyper_floor --example httparse_floor --example grpc_backend
exec cargo bench --bench load -- --json target/bench-load.json "$@"
