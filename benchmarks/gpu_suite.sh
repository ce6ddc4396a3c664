#!/usr/bin/env bash
# All issue-16 device measurements in one run (<= 8 min on one GPU); see gpu_suite.py.
#   benchmarks/gpu_suite.sh                  # GPU; writes gpu_suite.md / .csv under $OUT if set
#   benchmarks/gpu_suite.sh --device cpu --quick
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_suite.py "$@"
