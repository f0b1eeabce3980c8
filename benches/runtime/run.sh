#!/usr/bin/env bash
# The node's runtimes against their peers, side by side in one run, on one hello.wasm:
#   - a WASM instance of a release `fluxplane dev` (hello, cpu = 1.0), straight to its port;
#   - the same in a separate `fluxplane node` process joined to that cloud (its own country,
#     `ZZ`, which the app's geolocation picks);
#   - `wasmtime serve` 48.0.8 on the same hello.wasm;
#   - a busybox httpd container of the same dev cloud, through its mapped port.
# wrk drives each in turn at 1 and at 32 connections (ROUNDS rounds), and prints req/s, p50
# and p99 next to each other, with fluxplane's ratios to wasmtime serve.
#
#   cargo build --release --bin fluxplane --bin fluxctl
#   cargo install wasmtime-cli --version 48.0.8 --locked
#   apt-get install -y wrk busybox-static
#   benches/runtime/run.sh            # DURATION=10s ROUNDS=2 to change the load
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLUXPLANE_BIN:-$root/target/release}
duration=${DURATION:-10s}
rounds=${ROUNDS:-2}
wasmtime=${WASMTIME:-$(command -v wasmtime || echo "$HOME/.cargo/bin/wasmtime")}
for tool in wrk python3 docker; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ -x "$wasmtime" ] || { echo "needs wasmtime: cargo install wasmtime-cli --version 48.0.8 --locked" >&2; exit 2; }
[ -x /bin/busybox ] || { echo "needs /bin/busybox: apt-get install -y busybox-static" >&2; exit 2; }
[ -x "$bin/fluxplane" ] && [ -x "$bin/fluxctl" ] || {
  echo "needs $bin/fluxplane and fluxctl: cargo build --release --bin fluxplane --bin fluxctl" >&2; exit 2; }

work=$(mktemp -d)
tag="fluxplane-bench/busybox:$$"
dev_pid="" serve_pid="" node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
  [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  docker ps -aq --filter "ancestor=$tag" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export FLUXCTL_CONFIG_DIR="$work/config"
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

# The busybox image, FROM scratch: nothing can be pulled here.
mkdir -p "$work/root/bin" "$work/root/www"
cp /bin/busybox "$work/root/bin/"
ln -s busybox "$work/root/bin/sh"; ln -s busybox "$work/root/bin/httpd"
echo "hello from busybox" >"$work/root/www/index.html"
tar -C "$work/root" -cf "$work/root.tar" .
docker import --change 'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]' "$work/root.tar" "$tag" >/dev/null

echo "starting fluxplane dev ..." >&2
"$bin/fluxplane" dev --data-dir "$work/data" --api-listen 127.0.0.1:0 --gateway-listen 127.0.0.1:0 \
  --no-demo >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 600); do [ -s "$work/data/endpoints.json" ] && break; sleep 0.1; done
api=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['api'])" "$work/data/endpoints.json")

# A node of its own process, in eu, paid for by the dev wallet.
"$bin/fluxplane" node --region eu --geo 50.1,8.7 --country ZZ --control "$api" --listen 127.0.0.1:0 \
  --instance-ports 21000-21999 --data-dir "$work/node" --wallet "$work/data/dev-wallet.key" --tier cumulus \
  --id eu-bench >"$work/node.log" 2>&1 &
node_pid=$!

mkdir -p "$work/wasm" "$work/oci"
cp "$root/examples/hello/hello.wasm" "$work/wasm/"
cat >"$work/wasm/fluxapp.toml" <<TOML
name = "hello"
instances = 1
geolocation = ["acEU"]
[[component]]
name = "web"
wasm = "hello.wasm"
cpu = 1.0
ram = 64
TOML
mkdir -p "$work/node-app"
cp "$root/examples/hello/hello.wasm" "$work/node-app/"
sed -e 's/^name = "hello"/name = "hellonode"/' -e 's/acEU"/acEU_ZZ"/' "$work/wasm/fluxapp.toml" >"$work/node-app/fluxapp.toml"
cat >"$work/oci/fluxapp.toml" <<TOML
name = "busy"
instances = 1
geolocation = ["acEU"]
[[component]]
name = "web"
image = "$tag"
ports = [80]
cpu = 1.0
ram = 64
TOML
endpoint() { # app
  "$bin/fluxctl" --api "$api" --output json app status "$1" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['placements'][0]['endpoints']['web'])"
}
started=$(date +%s%N)
"$bin/fluxctl" --api "$api" app deploy "$work/wasm/fluxapp.toml" --wait >&2
"$bin/fluxctl" --api "$api" app deploy "$work/oci/fluxapp.toml" --wait >&2
echo "both apps deployed and routed in $(( ($(date +%s%N) - started) / 1000000 )) ms" >&2
for _ in $(seq 1 300); do
  "$bin/fluxctl" --api "$api" --output json node list | grep -q '"eu-bench"' && break; sleep 0.2
done
"$bin/fluxctl" --api "$api" app deploy "$work/node-app/fluxapp.toml" --wait >&2
wasm_instance=$(endpoint hello)
node_instance=$(endpoint hellonode)
oci_instance=$(endpoint busy)

serve_port=$(free_port)
"$wasmtime" serve -Scli --addr "127.0.0.1:$serve_port" "$work/wasm/hello.wasm" >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$serve_port/" >/dev/null 2>&1 && break; sleep 0.1; done

declare -A rps p50 p99
to_us() { # wrk's 1.23ms / 456.00us / 1.20s, in µs
  python3 -c "import sys,re; v,u=re.match(r'([\d.]+)(\w+)',sys.argv[1]).groups(); print(round(float(v)*{'us':1,'ms':1e3,'s':1e6}[u]))" "$1"
}
run() { # label connections url
  local out threads=$(( $2 > 1 ? 2 : 1 ))
  out=$(wrk -t"$threads" -c"$2" -d"$duration" --latency "$3")
  local key="$1/$2"
  rps[$key]="${rps[$key]:-} $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
  p50[$key]="${p50[$key]:-} $(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")"
  p99[$key]="${p99[$key]:-} $(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}
for _ in $(seq 1 "$rounds"); do
  for c in 1 32; do
    run fluxplane "$c" "http://$wasm_instance/"
    run "fluxplane node" "$c" "http://$node_instance/"
    run "wasmtime serve" "$c" "http://127.0.0.1:$serve_port/"
    run container "$c" "http://$oci_instance/"
  done
done

echo "wrk -d$duration, $rounds rounds (each figure: the rounds' median); fluxplane = an instance of fluxplane dev"
echo "| target | connections | requests/s | p50 | p99 |"
echo "|---|---|---|---|---|"
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for c in 1 32; do
  for t in fluxplane "fluxplane node" "wasmtime serve" container; do
    k="$t/$c"
    printf '| %s | %s | %.0f | %s µs | %s µs |\n' "$t" "$c" "$(median <<<"${rps[$k]}")" \
      "$(median <<<"${p50[$k]}")" "$(median <<<"${p99[$k]}")"
  done
  w="wasmtime serve/$c"
  for t in fluxplane "fluxplane node"; do
    f="$t/$c"
    python3 - "$t" "$(median <<<"${rps[$f]}")" "$(median <<<"${rps[$w]}")" "$(median <<<"${p99[$f]}")" \
      "$(median <<<"${p99[$w]}")" "$c" <<'PY'
import sys
t = sys.argv[1]
rf, rw, pf, pw, c = (float(x) for x in sys.argv[2:7])
print(f"| {t} / wasmtime serve | {int(c)} | {rf / rw:.2f}x | | {pf / pw:.2f}x |")
PY
  done
done
