#!/usr/bin/env bash
# The gateway against nginx, side by side in one run. A release `fluxplane dev` serves a hello
# app with one instance of `cpu = 1.0`; nginx proxies to the very same instance. wrk drives
# both in turns (two rounds each), and the figures are printed next to each other.
#
#   cargo build --release --bin fluxplane --bin fluxctl
#   apt-get install -y nginx wrk
#   benches/gateway/run.sh            # WRK="-t2 -c32 -d10s" ROUNDS=2 to change the load
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLUXPLANE_BIN:-$root/target/release}
wrk_args=${WRK:--t2 -c32 -d10s}
rounds=${ROUNDS:-2}
for tool in nginx wrk python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx wrk)" >&2; exit 2; }
done
[ -x "$bin/fluxplane" ] && [ -x "$bin/fluxctl" ] || {
  echo "needs $bin/fluxplane and fluxctl: cargo build --release --bin fluxplane --bin fluxctl" >&2; exit 2; }

work=$(mktemp -d)
dev_pid=""
cleanup() {
  [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export FLUXCTL_CONFIG_DIR="$work/config"

echo "starting fluxplane dev ..." >&2
"$bin/fluxplane" dev --data-dir "$work/data" --api-listen 127.0.0.1:0 --gateway-listen 127.0.0.1:0 \
  --no-demo >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 600); do [ -s "$work/data/endpoints.json" ] && break; sleep 0.1; done
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/data/endpoints.json" "$1"; }
api=$(field api)
gateway=$(field gateway)

mkdir -p "$work/app"
cp "$root/examples/hello/hello.wasm" "$work/app/"
cat >"$work/app/fluxapp.toml" <<TOML
name = "hello"
instances = 1
geolocation = ["acEU"]
[[component]]
name = "web"
wasm = "hello.wasm"
cpu = 1.0
ram = 64
hdd = 1
TOML
"$bin/fluxctl" --api "$api" app deploy "$work/app/fluxapp.toml" --wait >&2
instance=$("$bin/fluxctl" --api "$api" --output json app status hello |
  python3 -c "import json,sys; print(json.load(sys.stdin)['placements'][0]['endpoints']['web'])")

nginx_port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
cat >"$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.error.log;
daemon on;
events { worker_connections 1024; }
http {
  access_log off;
  upstream instance { server $instance; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://instance;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"
sleep 0.5

run() { # label url
  local out rps p50 p99
  # shellcheck disable=SC2086
  out=$(wrk $wrk_args --latency -H 'Host: hello.app.localhost' "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  printf '| %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99"
}
echo "instance $instance; wrk $wrk_args"
echo "| path | requests/s | p50 | p99 |"
echo "|---|---|---|---|"
for _ in $(seq 1 "$rounds"); do
  run "fluxplane gateway" "http://$gateway/"
  run "nginx" "http://127.0.0.1:$nginx_port/"
done
