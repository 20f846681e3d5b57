#!/usr/bin/env bash
# Runs Trio's whole test suite on a fresh machine: builds, fetches the pinned models and test
# photos into $TRIO_HOME and installs the pinned Ray (no-ops when they are already there), then
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests find models and photos through TRIO_HOME; default to where `trio fetch` puts them.
export TRIO_HOME="${TRIO_HOME:-$HOME/.cache/trio}"
cargo build --workspace --all-targets
# The binary the workspace build just made: `cargo run -p trio-cli` would unify features
# differently and compile the engine a second time.
"${CARGO_TARGET_DIR:-target}/debug/trio" fetch --all
# The pinned Ray for the scale-out test (tests/scale_ray.rs), in .venv-ray; a no-op when there.
./scale/install.sh >/dev/null
cargo test --workspace --no-fail-fast "$@"
