#!/usr/bin/env bash
# Install Slurm (slurmctld, slurmd, sbatch ...) and munge from Debian/Ubuntu apt, for the Slurm launcher's
# integration tests (tests/integration/test_launch_slurm.py) and for trying `rlhf launch slurm` on one machine.
# Idempotent and quiet: does nothing when sbatch, slurmctld, slurmd and munged are already on PATH.
# Needs root and apt-get; exits 1 with the reason otherwise. Measured: ~1-2 min on a fresh Debian 12 container.
#   bash scripts/install_slurm.sh
set -euo pipefail

have_all() {
  local exe
  for exe in sbatch scontrol scancel slurmctld slurmd munged mungekey; do
    command -v "$exe" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$exe" >/dev/null 2>&1 || return 1
  done
}

if have_all; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_slurm: needs root to apt-get install slurm-wlm munge (or install them yourself)" >&2; exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm: no apt-get here; install Slurm (slurmctld, slurmd, sbatch) and munge with your package manager" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
have_all || { echo "install_slurm: slurm-wlm/munge installed but some executables are missing" >&2; exit 1; }
