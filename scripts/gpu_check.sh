#!/usr/bin/env bash
# Run on a machine with a CUDA device: the gpu-marked tests, then every benchmark on CUDA
# (float32, then the networks in bfloat16), all figures written to one file.
#
#   scripts/gpu_check.sh [OUT]        # OUT defaults to gpu-figures.md
#
# It has not been run: no GPU was lent when it was written (issue 14, point 3).
set -euo pipefail
out="${1:-gpu-figures.md}"
python="${PYTHON:-python}"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: torch.cuda.is_available() is False')"
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  echo
  echo '## pytest -m gpu'
  echo '```'
  "$python" -m pytest -q -m gpu tests/ 2>&1 | tail -n 15 || echo "(some gpu tests FAILED; see above)"
  echo '```'
  echo
  echo '## python run.py bench all --device cuda'
  echo '```'
  "$python" run.py bench all --device cuda --repeats 5
  echo '```'
  echo
  echo '## python run.py bench steps --device cuda --bf16'
  echo '```'
  "$python" run.py bench steps --device cuda --repeats 5 --bf16
  echo '```'
} 2>&1 | tee "$out"
echo "wrote $out"
