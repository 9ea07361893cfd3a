# Helpers shared by scripts/callgrind.sh and scripts/cpu_split.sh, which run proxies
# with one worker each in front of one nginx backend on 127.0.0.1. Sourced; the caller
# calls `scratch` first and sets `backend` (the backend's port) before the configs.

# scratch NAME: a scratch directory in `dir`, and `pids`, the processes to stop; both
# are cleaned up when the script exits.
scratch() {
  dir=$(mktemp -d "/tmp/levee-$1-XXXXXX")
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# nginx_conf NAME HTTP_LINES: an nginx config of one process (no master: callgrind
# follows one), with HTTP_LINES in its http block; prints its path.
nginx_conf() {
  cat >"$dir/$1.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/$1.pid;
error_log $dir/$1.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/cb; proxy_temp_path $dir/px; fastcgi_temp_path $dir/fc;
  uwsgi_temp_path $dir/uw; scgi_temp_path $dir/sc;
  keepalive_requests 1000000;
$2
}
EOF
  echo "$dir/$1.conf"
}

# nginx_proxy_conf PORT: nginx proxying PORT to the backend, keep-alive on both sides
# (the bench's proxy settings).
nginx_proxy_conf() {
  nginx_conf "nginx-proxy-$1" "  upstream b { server 127.0.0.1:$backend; keepalive 256; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$1;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
}

# haproxy_conf PORT LINES: HAProxy in HTTP mode on PORT, one thread, the bench's
# keep-alive settings, LINES in its frontend; prints its path.
haproxy_conf() {
  cat >"$dir/haproxy-$1.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$1
$2
backend be
    server s 127.0.0.1:$backend
EOF
  echo "$dir/haproxy-$1.cfg"
}
