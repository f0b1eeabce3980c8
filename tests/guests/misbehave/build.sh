#!/usr/bin/env bash
# Rebuilds misbehave.wasm (committed).
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
cp target/wasm32-wasip2/release/misbehave.wasm misbehave.wasm
