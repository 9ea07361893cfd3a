#!/usr/bin/env bash
# Installs what levee needs on a fresh Debian machine. Building it needs only Rust
# (checked below). With --all it also installs what the optional checks use: chromium
# (status page test), haproxy, nginx, wrk and openssl (benchmarks; the tls section makes
# its certificate with it), promtool (alert rules).
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
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
