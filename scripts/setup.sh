#!/usr/bin/env bash
# Installs what levee needs on a fresh Debian machine. Building it needs only Rust
# (checked below). With --all it also installs what the optional checks use: chromium
# (status page test), haproxy, nginx, wrk, h2load (nghttp2-client) and openssl
# (benchmarks; the tls section makes its certificate with it), promtool (alert rules),
# and Python's grpcio with grpcio-health-checking (tests/grpcio.rs) through pip.
# Safe to run again.
set -euo pipefail

need=()
if [ "${1:-}" = "--all" ]; then
  command -v chromium >/dev/null || need+=(chromium)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v nginx >/dev/null || need+=(nginx)
  command -v wrk >/dev/null || need+=(wrk)
  command -v openssl >/dev/null || need+=(openssl)
  command -v promtool >/dev/null || need+=(prometheus)
  command -v h2load >/dev/null || need+=(nghttp2-client)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "${1:-}" = "--all" ] && ! python3 -c 'import grpc, grpc_health.v1.health_pb2' 2>/dev/null; then
  echo "installing: grpcio grpcio-health-checking (pip)"
  pip=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore)
  # Debian's own python3 is "externally managed" (PEP 668) and wants the flag.
  # Not fatal: without it tests/grpcio.rs says "skipped" and everything else runs.
  "${pip[@]}" grpcio grpcio-health-checking 2>/dev/null ||
    "${pip[@]}" --break-system-packages grpcio grpcio-health-checking ||
    echo "setup.sh: could not install grpcio; tests/grpcio.rs will be skipped" >&2
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
