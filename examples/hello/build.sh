#!/usr/bin/env bash
# Rebuilds hello.wasm (committed, so running fluxplane needs no wasm target).
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
cp target/wasm32-wasip2/release/hello.wasm hello.wasm
ls -l hello.wasm
