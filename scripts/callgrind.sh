#!/usr/bin/env bash
# User instructions per proxied request, under callgrind: levee (this checkout),
# examples/hyper_floor (the least hyper proxy), examples/httparse_floor (the least
# forwarder on tokio and httparse), nginx and HAProxy as proxies (Debian's,
# one process, one thread) and, with LEVEE_BEFORE, an older levee build. Instruction counts do not move with the machine's noise as timings do, so a
# change to the request path can be measured while other work runs.
#
#   scripts/callgrind.sh                 # 1 and 16 connections
#   CONNS="16" LEVEE_BEFORE=/path/to/old/levee scripts/callgrind.sh
#   EDGE=1 CONNS="16" LEVEE_BEFORE=/path/to/old/levee scripts/callgrind.sh
#   OUT=/tmp/cg scripts/callgrind.sh     # keep the callgrind files there
#   TRACE_RATIOS="0.01 1" CONNS="16" scripts/callgrind.sh   # and with tracing on
#   BROWSER=1 CONNS="16" scripts/callgrind.sh   # requests with a browser's 9 fields
#   SHED=1 CONNS="16" scripts/callgrind.sh      # instructions per 503 (one slot, held)
#
# TRACE_RATIOS (issue 21) adds one row per ratio: levee with [server.tracing] at that
# sample_ratio, exporting to the nginx backend (which answers every POST 200, a
# collector that accepts everything at once); the exporter's own work counts too.
#
# EDGE=1 (issue 18) measures the edge load bench section's rows instead: levee (and
# levee-before) with one upstream, and levee with 10 upstreams routed by host
# (site0..site8.example.com and *.example.com) and the PROXY protocol, all through
# HAProxy in TCP mode as a relay (`send-proxy-v2` for the PROXY rows), every request
# with `Host: www.example.com` (the wildcard) or, in the last row, site4.example.com.
#
# SHED=1 measures levee's 503 instead: one backend that accepts and never answers, one
# slot (`max_inflight = 1`, `queue_depth = 0`) held by a request for the whole run, so
# every request wrk sends is shed. For scale, the same run measures the least a proxy can
# do per answer: nginx's `return 503` and HAProxy's `http-request return status 503`,
# answers written without any backend, limit or queue.
#
# Each target runs alone (one worker) under `valgrind --tool=callgrind` behind an nginx
# backend that answers at once; wrk warms it for 3 s, the counters are zeroed, wrk runs
# 10 s, the counters are dumped and divided by the requests wrk completed. Needs
# valgrind, nginx and wrk (Debian packages); everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="valgrind callgrind_control callgrind_annotate nginx haproxy wrk curl"
for tool in $tools; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "callgrind.sh: $tool not installed" >&2
    exit 1
  }
done
cargo build --release --bin levee --example hyper_floor --example httparse_floor

# scratch, free_port, nginx_conf, nginx_proxy_conf, haproxy_conf
. scripts/lib/one_worker.sh
scratch callgrind


backend=$(free_port)
nginx_conf nginx "  server { listen 127.0.0.1:$backend; location / { return 200 \"hello from backend\\n\"; } }" >/dev/null
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

# wrk's extra arguments (EDGE: the Host header; BROWSER: a browser's request fields),
# and the port wrk and the readiness check go to instead of the target's own (EDGE: the
# relay in front of it).
WRK_ARGS=()
VIA=
if [ -n "${BROWSER:-}" ]; then
  WRK_ARGS=(
    -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    -H "Accept-Language: en-US,en;q=0.5"
    -H "Accept-Encoding: gzip, deflate, br, zstd"
    -H "Referer: https://www.example.com/catalog/index.html"
    -H "Cookie: session=6f1c2a9e4b7d8f3a; theme=dark; consent=1"
    -H "Upgrade-Insecure-Requests: 1"
    -H "Sec-Fetch-Mode: navigate"
  )
fi

# measure NAME CONNS PORT COMMAND...
measure() {
  local name=$1 conns=$2 port=$3
  shift 3
  local to=${VIA:-$port}
  valgrind --tool=callgrind --callgrind-out-file="$dir/$name.%p" "$@" >"$dir/$name.log" 2>&1 &
  local pid=$!
  wait_up "$to"
  wrk "${WRK_ARGS[@]}" -t1 -c"$conns" -d3 "http://127.0.0.1:$to/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local out
  out=$(wrk "${WRK_ARGS[@]}" -t1 -c"$conns" -d10 "http://127.0.0.1:$to/")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$(ls -t "$dir/$name".*.1 | head -1)" "$OUT/$name-c$conns.callgrind"
  fi
  local n ir file
  n=$(awk '/requests in/{print $1}' <<<"$out")
  file=$(ls -t "$dir/$name".*.1 | head -1)
  ir=$(callgrind_annotate "$file" | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  printf '| %s | %s | %s | %s |\n' "$name" "$conns" "$n" "$((ir / n))"
}

# levee_conf PORT [hosts] [proxy] [ratio]: one upstream, or with `hosts` 10 by host;
# `proxy`: server.proxy_protocol = true; `ratio`: tracing on at that sample_ratio.
levee_conf() {
  local port=$1 hosts=${2:-} proxy=${3:-} ratio=${4:-}
  {
    printf '[server]\nlisten = ["127.0.0.1:%s"]\nthreads = 1\n' "$port"
    [ "$proxy" = proxy ] && echo "proxy_protocol = true"
    if [ -n "$ratio" ]; then
      printf '\n[server.tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = %s\n' "$backend" "$ratio"
    fi
    if [ "$hosts" = hosts ]; then
      for i in 0 1 2 3 4 5 6 7 8 wildcard; do
        local host="site$i.example.com"
        [ "$i" = wildcard ] && host="*.example.com"
        printf '\n[[upstream]]\nname = "u%s"\nhosts = ["%s"]\nroutes = ["/"]\n' "$i" "$host"
        printf '\n[upstream.limits]\nmax_inflight = 100000\n'
        printf '\n[[upstream.backend]]\naddress = "127.0.0.1:%s"\n' "$backend"
      done
    else
      printf '\n[[upstream]]\nname = "bench"\nroutes = ["/"]\n'
      printf '\n[upstream.limits]\nmax_inflight = 100000\n'
      printf '\n[[upstream.backend]]\naddress = "127.0.0.1:%s"\n' "$backend"
    fi
  } >"$dir/levee-$port.toml"
  echo "$dir/levee-$port.toml"
}


# relay PORT TARGET [send-proxy-v2]: HAProxy in TCP mode, one thread, in front of
# TARGET; it runs until the script ends.
relay() {
  cat >"$dir/relay-$1.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$1
    default_backend be
backend be
    server s 127.0.0.1:$2 ${3:-}
EOF
  haproxy -db -f "$dir/relay-$1.cfg" >"$dir/relay-$1.log" 2>&1 &
  pids+=($!)
}

# edge_row NAME CONNS HOST BINARY [hosts] [proxy]: BINARY with levee_conf's config,
# behind a relay (sending PROXY v2 with `proxy`), wrk with `Host: HOST`.
edge_row() {
  local name=$1 conns=$2 host=$3 binary=$4 hosts=${5:-} proxy=${6:-}
  local port via send=
  port=$(free_port)
  via=$(free_port)
  [ "$proxy" = proxy ] && send=send-proxy-v2
  relay "$via" "$port" "$send"
  WRK_ARGS=(-H "Host: $host")
  VIA=$via measure "$name" "$conns" "$port" "$binary" run --config "$(levee_conf "$port" "$hosts" "$proxy")"
}

if [ -n "${EDGE:-}" ]; then
  echo "| target (via a HAProxy TCP relay) | connections | requests | user instructions per request |"
  echo "|---|---:|---:|---:|"
  for conns in ${CONNS:-1 16}; do
    if [ -n "${LEVEE_BEFORE:-}" ]; then
      edge_row levee-before-relay "$conns" www.example.com "$LEVEE_BEFORE"
    fi
    edge_row levee-relay "$conns" www.example.com target/release/levee
    edge_row levee-proxy-only "$conns" www.example.com target/release/levee "" proxy
    edge_row levee-hosts-only "$conns" www.example.com target/release/levee hosts
    edge_row levee-edge "$conns" www.example.com target/release/levee hosts proxy
    edge_row levee-edge-exact "$conns" site4.example.com target/release/levee hosts proxy
  done
  exit 0
fi

if [ -n "${SHED:-}" ]; then
  # A backend that accepts and never answers: the one slot levee allows it stays held.
  hold=$(free_port)
  python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
held = []
while True:
    held.append(s.accept()[0])
' "$hold" &
  pids+=($!)
  # Ready once the port accepts, one request holds the slot and the next is shed.
  wait_up() {
    for _ in $(seq 200); do
      (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && break
      sleep 0.1
    done
    # The holder and a check race for the slot: a check that wins gives up after 1 s
    # (the holder, shed meanwhile, is sent again), so the holder gets it in the end.
    local holder=""
    for _ in $(seq 200); do
      if [ -z "$holder" ] || ! kill -0 "$holder" 2>/dev/null; then
        curl -s -o /dev/null -m 600 "http://127.0.0.1:$1/hold" &
        holder=$!
        pids+=("$holder")
        sleep 0.2
      fi
      [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$1/")" = 503 ] && return 0
      sleep 0.1
    done
    echo "callgrind.sh: no 503 from port $1" >&2
    return 1
  }
  # shed_conf PORT: one backend (the holder) with one slot and no queue.
  shed_conf() {
    printf '[server]\nlisten = ["127.0.0.1:%s"]\nthreads = 1\n' "$1"
    printf '\n[[upstream]]\nname = "shed"\nroutes = ["/"]\n'
    printf '\n[upstream.limits]\nmax_inflight = 1\nqueue_depth = 0\n'
    printf '\n[[upstream.backend]]\naddress = "127.0.0.1:%s"\n' "$hold"
  }
  echo "| target (every answer a 503) | connections | 503s | user instructions per 503 |"
  echo "|---|---:|---:|---:|"
  for conns in ${CONNS:-1 16}; do
    port=$(free_port)
    shed_conf "$port" >"$dir/shed-$port.toml"
    measure levee-shed "$conns" "$port" target/release/levee run --config "$dir/shed-$port.toml"
    port=$(free_port)
    measure nginx-return-503 "$conns" "$port" nginx -c "$(nginx_conf "nginx-503-$port" "  server { listen 127.0.0.1:$port; location = /hold { return 200; } location / { return 503; } }")" -p "$dir"
    port=$(free_port)
    measure haproxy-return-503 "$conns" "$port" haproxy -db -f "$(haproxy_conf "$port" "    http-request return status 200 if { path /hold }
    http-request return status 503")"
    if [ -n "${LEVEE_BEFORE:-}" ]; then
      port=$(free_port)
      shed_conf "$port" >"$dir/shed-$port.toml"
      measure levee-before-shed "$conns" "$port" "$LEVEE_BEFORE" run --config "$dir/shed-$port.toml"
    fi
  done
  exit 0
fi

echo "| target | connections | requests | user instructions per request |"
echo "|---|---:|---:|---:|"
for conns in ${CONNS:-1 16}; do
  port=$(free_port)
  measure hyper-floor "$conns" "$port" target/release/examples/hyper_floor "127.0.0.1:$port" "127.0.0.1:$backend"
  port=$(free_port)
  measure httparse-floor "$conns" "$port" target/release/examples/httparse_floor "127.0.0.1:$port" "127.0.0.1:$backend"
  port=$(free_port)
  measure levee "$conns" "$port" target/release/levee run --config "$(levee_conf "$port")"
  for ratio in ${TRACE_RATIOS:-}; do
    port=$(free_port)
    measure "levee-trace-$ratio" "$conns" "$port" target/release/levee run --config "$(levee_conf "$port" "" "" "$ratio")"
  done
  if [ -n "${LEVEE_BEFORE:-}" ]; then
    port=$(free_port)
    measure levee-before "$conns" "$port" "$LEVEE_BEFORE" run --config "$(levee_conf "$port")"
  fi
  port=$(free_port)
  measure nginx-proxy "$conns" "$port" nginx -c "$(nginx_proxy_conf "$port")" -p "$dir"
  port=$(free_port)
  measure haproxy-proxy "$conns" "$port" haproxy -db -f "$(haproxy_conf "$port" "    default_backend be")"
done
