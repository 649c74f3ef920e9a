#!/usr/bin/env bash
# The one command sent to a lent GPU machine: build with CUDA, run the whole test suite
# (CUDA tests included) and the CUDA benchmark; logs and tables land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastseq-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# The same build environment as scripts/cuda_build_check.sh (which proves this build on a
# machine without a GPU): CUDA_HOME from nvcc itself, the nvidia-* wheels' headers on CPATH.
# shellcheck source=scripts/cuda_env.sh
. scripts/cuda_env.sh
fastseq_cuda_env "$PY"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # H100/H200
{
  nvidia-smi
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo "CUDA_HOME=${CUDA_HOME:-} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CPATH=${CPATH:-}"
  nvcc --version | tail -2
} > "$OUT/machine.txt" 2>&1
# Uses the machine's own torch (no network there): build in place with CUDA forced on and
# run everything as `python -m ...` from the source tree (no pip install needed).
FASTSEQ_CUDA=1 MAX_JOBS=16 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1
echo "build rc=$?" | tee -a "$OUT/build.log"
$PY -m fastseq.info > "$OUT/info.txt" 2>&1
$PY -m pytest -q -rs tests > "$OUT/tests.log" 2>&1
echo "tests rc=$?" | tee -a "$OUT/tests.log"
$PY -m fastseq bench --device cuda --suite small --out "$OUT/bench_cuda.md" --json "$OUT/bench_cuda.json" --plot "$OUT/bench_cuda.png" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" | tee -a "$OUT/bench.log"
tail -5 "$OUT/tests.log"
