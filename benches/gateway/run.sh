#!/usr/bin/env bash
# The fluxplane gateway against nginx as a reverse proxy, side by side in one run, in front of
# the same fixed upstream on loopback (nginx serving a 3-byte answer itself, one worker). The
# gateway is `bench-gateway`: the production request path with its one route given on the
# command line. nginx proxies with keep-alive to the upstream, with the same worker count as
# the gateway's threads. wrk drives both in turns; medians of the rounds and ratios are printed.
#
#   cargo build --release -p bench-gateway
#   apt-get install -y nginx wrk
#   benches/gateway/run.sh       # WRK="-t2 -c64 -d10s" ROUNDS=3 WORKERS=2 to change the load
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLUXPLANE_BIN:-$root/target/release}
wrk_args=${WRK:--t2 -c64 -d10s}
rounds=${ROUNDS:-3}
workers=${WORKERS:-2}
for tool in nginx wrk python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx wrk)" >&2; exit 2; }
done
[ -x "$bin/bench-gateway" ] || { echo "needs $bin/bench-gateway: cargo build --release -p bench-gateway" >&2; exit 2; }

work=$(mktemp -d)
gw_pid=""
cleanup() {
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null || true
  for pid in "$work"/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
upstream_port=$(port)
nginx_port=$(port)
gateway_port=$(port)

cat >"$work/upstream.conf" <<NGINX
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream.error.log;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$upstream_port;
    keepalive_requests 1000000;
    location / { return 200 "ok\n"; }
  }
}
NGINX
cat >"$work/proxy.conf" <<NGINX
worker_processes $workers;
pid $work/proxy.pid;
error_log $work/proxy.error.log;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  upstream instance { server 127.0.0.1:$upstream_port; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$nginx_port;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://instance;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$work/upstream.conf" -p "$work"
nginx -c "$work/proxy.conf" -p "$work"
"$bin/bench-gateway" "127.0.0.1:$upstream_port" "127.0.0.1:$gateway_port" "$workers" >"$work/gateway.log" 2>&1 &
gw_pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/gateway.log" && break; sleep 0.1; done
# Both answer before anything is measured.
curl -sf -H 'Host: bench.app.bench.local' "http://127.0.0.1:$gateway_port/" >/dev/null
curl -sf "http://127.0.0.1:$nginx_port/" >/dev/null

results=$work/results
run() { # label url
  local out
  # shellcheck disable=SC2086
  out=$(wrk $wrk_args --latency -H 'Host: bench.app.bench.local' "$2")
  grep -q "Non-2xx" <<<"$out" && { echo "$1: non-2xx answers:" >&2; echo "$out" >&2; exit 1; }
  python3 - "$1" "$results" <<PY
import re, sys
out = """$out"""
def dur(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = dur(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = dur(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
open(sys.argv[2], "a").write(f"{sys.argv[1]}\t{rps}\t{p50}\t{p99}\n")
print(f"  {sys.argv[1]:<18} {rps:>10.0f} req/s  p50 {p50:.3f} ms  p99 {p99:.3f} ms", file=sys.stderr)
PY
}
echo "upstream nginx (1 worker) on :$upstream_port; $workers workers each; wrk $wrk_args; $rounds rounds" >&2
for i in $(seq 1 "$rounds"); do
  echo "round $i" >&2
  run "fluxplane" "http://127.0.0.1:$gateway_port/"
  run "nginx" "http://127.0.0.1:$nginx_port/"
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rps, p50, p99 = line.split("\t")
    rows.setdefault(label, []).append((float(rps), float(p50), float(p99)))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in rows.items()}
print("| proxy | requests/s | p50 | p99 |")
print("|---|---|---|---|")
for k in ("fluxplane", "nginx"):
    r, a, b = med[k]
    print(f"| {k} | {r:,.0f} | {a:.3f} ms | {b:.3f} ms |")
f, n = med["fluxplane"], med["nginx"]
print(f"\nfluxplane / nginx: requests/s {f[0] / n[0]:.2f}x (target >= 1.2x), p99 {f[2] / n[2]:.2f}x (target <= 1.0x)")
PY
