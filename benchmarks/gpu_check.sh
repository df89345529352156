#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA device and torch installed:
#   bash benchmarks/gpu_check.sh            (then the gpu-marked tests: pytest -m gpu)
# Builds the 1.1B random model tiny:bench-1b once (about 4.5 GB under $CASLIE_CACHE), then prints
# one table (benchmarks/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export TOKENIZERS_PARALLELISM=false PYTHONPATH=${PYTHONPATH:-}:$PWD
export CASLIE_CACHE=${CASLIE_CACHE:-/tmp/caslie-cache}
"$PYTHON" benchmarks/gpu_check.py "$@"
"$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests || echo "gpu-marked tests: exit $?"
