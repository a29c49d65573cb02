#!/usr/bin/env bash
# The main job: set up, then train the tiny CPU recipe (SFT warm-up + GRPO with three reward components).
# Extra arguments are recipe overrides, e.g. `bash scripts/demo.sh run.steps=20`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec rlhf train recipes/grpo_tiny_cpu.yaml --overwrite "$@"
