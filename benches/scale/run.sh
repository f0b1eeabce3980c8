#!/usr/bin/env bash
# The control loop at scale, as processes (see benches/scale/src/bin/scale-harness.rs):
#   benches/scale/run.sh --nodes N --apps A [--replicas 1|3] [--steady-secs S]
# Builds the release binaries, starts a chain and the control replicas of the three default
# regions, simulates N node agents (real keys, real signed heartbeats over HTTP), registers A
# apps of 4 instances and prints each figure beside its target. The last line is
# machine-readable.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p fluxplane -p bench-scale
# Thousands of agents each hold a connection: raise the open-file limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/scale-harness --fluxplane target/release/fluxplane "$@"
