#!/usr/bin/env bash
# The whole test suite: unit, integration (in-process servers and fault proxy, and
# with the interop feature third-party peers: Python websockets, Node ws, nginx as
# TLS proxy, which it installs first into target/peers, nginx via apt) and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
cargo test --locked --features interop "$@"
