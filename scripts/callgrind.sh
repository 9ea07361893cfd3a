#!/usr/bin/env bash
# User instructions per proxied request, under callgrind: levee (this checkout),
# examples/hyper_floor (the least hyper proxy) and, with LEVEE_BEFORE, an older levee
# build. Instruction counts do not move with the machine's noise as timings do, so a
# change to the request path can be measured while other work runs.
#
#   scripts/callgrind.sh                 # 1 and 16 connections
#   CONNS="16" LEVEE_BEFORE=/path/to/old/levee scripts/callgrind.sh
#
# Each target runs alone (one worker) under `valgrind --tool=callgrind` behind an nginx
# backend that answers at once; wrk warms it for 3 s, the counters are zeroed, wrk runs
# 10 s, the counters are dumped and divided by the requests wrk completed. Needs
# valgrind, nginx and wrk (Debian packages); everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in valgrind callgrind_control callgrind_annotate nginx wrk curl; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "callgrind.sh: $tool not installed" >&2
    exit 1
  }
done
cargo build --release --bin levee --example hyper_floor

dir=$(mktemp -d /tmp/levee-callgrind-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

backend=$(free_port)
cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/cb; proxy_temp_path $dir/px; fastcgi_temp_path $dir/fc;
  uwsgi_temp_path $dir/uw; scgi_temp_path $dir/sc;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$backend; location / { return 200 "hello from backend\n"; } }
}
EOF
nginx -c "$dir/nginx.conf" -p "$dir" &
pids+=($!)

wait_up() {
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "callgrind.sh: nothing answers on port $1" >&2
  return 1
}
wait_up "$backend"

# measure NAME CONNS PORT COMMAND...
measure() {
  local name=$1 conns=$2 port=$3
  shift 3
  valgrind --tool=callgrind --callgrind-out-file="$dir/$name.%p" "$@" >"$dir/$name.log" 2>&1 &
  local pid=$!
  wait_up "$port"
  wrk -t1 -c"$conns" -d3 "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local out
  out=$(wrk -t1 -c"$conns" -d10 "http://127.0.0.1:$port/")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local n ir file
  n=$(awk '/requests in/{print $1}' <<<"$out")
  file=$(ls -t "$dir/$name".*.1 | head -1)
  ir=$(callgrind_annotate "$file" | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  printf '| %s | %s | %s | %s |\n' "$name" "$conns" "$n" "$((ir / n))"
}

levee_conf() {
  cat >"$dir/levee-$1.toml" <<EOF
[server]
listen = ["127.0.0.1:$1"]
threads = 1

[[upstream]]
name = "bench"
routes = ["/"]

[upstream.limits]
max_inflight = 100000

[[upstream.backend]]
address = "127.0.0.1:$backend"
EOF
  echo "$dir/levee-$1.toml"
}

echo "| target | connections | requests | user instructions per request |"
echo "|---|---:|---:|---:|"
for conns in ${CONNS:-1 16}; do
  port=$(free_port)
  measure hyper-floor "$conns" "$port" target/release/examples/hyper_floor "127.0.0.1:$port" "127.0.0.1:$backend"
  port=$(free_port)
  measure levee "$conns" "$port" target/release/levee run --config "$(levee_conf "$port")"
  if [ -n "${LEVEE_BEFORE:-}" ]; then
    port=$(free_port)
    measure levee-before "$conns" "$port" "$LEVEE_BEFORE" run --config "$(levee_conf "$port")"
  fi
done
