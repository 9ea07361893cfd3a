#!/usr/bin/env bash
# Whose CPU a proxied request costs: the proxy's (user and system), the backend's and the
# client's, for levee, HAProxy, nginx and examples/httparse_floor side by side, each with
# one worker in front of one nginx backend, wrk -t2 -c64 as the client. A proxy's own CPU
# per request is only part of the machine's: how it writes (one answer at a time, or
# many at once) changes what the backend and the client spend on each request, and so
# the requests per second on a machine they share.
#
#   scripts/cpu_split.sh            # 5 interleaved rounds of 4 s each
#   ROUNDS=9 SECS=3 scripts/cpu_split.sh
#
# Prints one line per target and round, then the medians. Needs nginx, haproxy, wrk and
# python3; everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx haproxy wrk python3; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
    echo "cpu_split.sh: $tool not installed (scripts/setup.sh --all)" >&2
    exit 1
  }
done
cargo build --release --bin levee --example httparse_floor

# scratch, free_port, nginx_conf, nginx_proxy_conf, haproxy_conf
. scripts/lib/one_worker.sh
scratch cpu-split
backend=$(free_port) levee=$(free_port) haproxy=$(free_port) nginx=$(free_port) floor=$(free_port)

nginx -c "$(nginx_conf backend "  server { listen 127.0.0.1:$backend; location / { return 200 \"hello from backend\\n\"; } }")" -p "$dir" &
pids+=($!)
backend_pid=$!
nginx -c "$(nginx_proxy_conf "$nginx")" -p "$dir" &
pids+=($!)
nginx_pid=$!
haproxy -db -f "$(haproxy_conf "$haproxy" "    default_backend be")" >"$dir/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!
printf '[server]\nlisten = ["127.0.0.1:%s"]\nthreads = 1\n\n[[upstream]]\nname = "bench"\nroutes = ["/"]\n\n[upstream.limits]\nmax_inflight = 100000\n\n[[upstream.backend]]\naddress = "127.0.0.1:%s"\n' \
  "$levee" "$backend" >"$dir/levee.toml"
target/release/levee run --config "$dir/levee.toml" >"$dir/levee.log" 2>&1 &
pids+=($!)
levee_pid=$!
target/release/examples/httparse_floor "127.0.0.1:$floor" "127.0.0.1:$backend" >"$dir/floor.log" 2>&1 &
pids+=($!)
floor_pid=$!

python3 - "$backend_pid" "${ROUNDS:-5}" "${SECS:-4}" \
  "levee:$levee:$levee_pid" "haproxy:$haproxy:$haproxy_pid" "nginx:$nginx:$nginx_pid" \
  "httparse-floor:$floor:$floor_pid" <<'EOF'
import os, re, statistics, subprocess, sys, time, urllib.request

backend, rounds, secs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
targets = [t.split(":") for t in sys.argv[4:]]
tick = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    """User and system seconds of a process."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / tick, int(f[12]) / tick

for name, port, _ in targets:
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(f"cpu_split.sh: {name} does not answer on port {port}")

rows = {name: [] for name, _, _ in targets}
print("µs per request: proxy user, proxy system, backend, client (wrk); req/s")
for r in range(1, rounds + 1):
    for name, port, pid in targets:
        url = f"http://127.0.0.1:{port}/"
        subprocess.run(["wrk", "-t2", "-c64", "-d1s", url], capture_output=True)
        p0, b0 = cpu(pid), cpu(backend)
        w0 = os.times()
        out = subprocess.run(["wrk", "-t2", "-c64", f"-d{secs}s", url],
                             capture_output=True, text=True).stdout
        w1 = os.times()
        p1, b1 = cpu(pid), cpu(backend)
        n = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        per = lambda d: d / n * 1e6
        row = (per(p1[0] - p0[0]), per(p1[1] - p0[1]), per(sum(b1) - sum(b0)),
               per((w1.children_user - w0.children_user) + (w1.children_system - w0.children_system)),
               rps)
        rows[name].append(row)
        print(f"round {r} {name:15} user {row[0]:5.2f} system {row[1]:5.2f} backend {row[2]:5.2f} "
              f"client {row[3]:5.2f}  {row[4]:8.0f} req/s", flush=True)
print("\n| medians | proxy user | proxy system | backend | client | all | req/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, v in rows.items():
    m = [statistics.median(x) for x in zip(*v)]
    print(f"| {name} | {m[0]:.2f} µs | {m[1]:.2f} µs | {m[2]:.2f} µs | {m[3]:.2f} µs | "
          f"{sum(m[:4]):.2f} µs | {m[4]:,.0f} |")
EOF
