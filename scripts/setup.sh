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

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.rlhf-install-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints/cpu.txt" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing into $VENV (first time: ~2-3 min)" >&2
  python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q -c "$ROOT/constraints/cpu.txt" 'torch==2.13.0' 2>&1 | grep -v "^WARNING: Location" || true
  python -m pip install -q -c "$ROOT/constraints/cpu.txt" -e "$ROOT[deepspeed,dev]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  python -c "import torch, deepspeed, ray, transformers, rlhf, rewards" \
    || { echo "setup: the install is incomplete (see pip's output above)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
