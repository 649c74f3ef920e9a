#!/usr/bin/env bash
# Proves the CUDA build of fastseq._C compiles and links on a machine with nvcc but no GPU.
#
# In a throwaway venv (reused when present, so a second run is fast) it installs the
# CUDA-enabled torch wheel of the version the Makefile pins (its CUDA must match nvcc's
# major version) with its nvidia-* dependencies (libraries `import torch` loads; their wheels
# also carry the cuBLAS / cuSPARSE / cuSOLVER headers ATen's CUDA headers include). It builds the
# whole CUDA build of fastseq._C (every csrc/**/*.cpp, *_cuda.cpp and *.cu, with
# FASTSEQ_WITH_CUDA) from a copy of the working tree, so no CUDA .so lands in the source
# tree, and checks that the module loads (every symbol resolved: Python loads extensions
# with RTLD_NOW) and reports built_with_cuda(). Needs the registry (~3 GB of wheels on a
# first run; ~5 GB of disk), a few minutes. Not run in CI.
#
# Environment: FASTSEQ_CUDA_CHECK_DIR (work dir, default ${TMPDIR:-/tmp}/fastseq-cuda-check),
# FASTSEQ_CHECK_TORCH (torch version, default the Makefile's pin), TORCH_CUDA_ARCH_LIST
# (default 9.0: H100/H200), MAX_JOBS (default 2), CUDA_HOME (default: where nvcc lives).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TORCH_VERSION=${FASTSEQ_CHECK_TORCH:-$(sed -n 's/^TORCH *?= *torch==//p' "$ROOT/Makefile")}
# One venv, source copy and build per torch version, so checking another is no reinstall.
WORK=${FASTSEQ_CUDA_CHECK_DIR:-${TMPDIR:-/tmp}/fastseq-cuda-check}/torch-$TORCH_VERSION
VENV=$WORK/venv
SRC=$WORK/src
LOG=$WORK/build.log
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
mkdir -p "$WORK"

T0=$SECONDS
fail() {
  echo
  echo "== cuda_build_check: FAILED: $*"
  echo "   (work dir $WORK; build log $LOG)"
  exit 1
}
step() { echo "-- $* [$((SECONDS - T0)) s]"; }

# ---- nvcc and CUDA_HOME ----------------------------------------------------------------
# shellcheck source=scripts/cuda_env.sh
. "$ROOT/scripts/cuda_env.sh"
fastseq_cuda_env || fail "nvcc not found (put it on PATH or set CUDA_HOME)"
NVCC_VERSION=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')
[ -n "$NVCC_VERSION" ] || fail "cannot read the version of $CUDA_HOME/bin/nvcc"
step "nvcc $NVCC_VERSION at $CUDA_HOME; torch wanted: $TORCH_VERSION; arch $TORCH_CUDA_ARCH_LIST"

# ---- venv with a CUDA torch and the CUDA library headers -------------------------------
T_DL=$SECONDS
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || fail "cannot create venv $VENV"
VPY=$VENV/bin/python
# pip -q, without the warnings about absent local index folders that some set-ups print.
pip_q() {
  "$VPY" -m pip -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
STAMP=$VENV/.fastseq-cuda-check
if [ "$(cat "$STAMP" 2>/dev/null)" != "$TORCH_VERSION" ]; then
  step "installing torch $TORCH_VERSION (CUDA build) and its nvidia-* wheels into $VENV"
  echo "   (~3 GB of wheels on a first run: torch and the nvidia-* libraries it loads)"
  # '===' matches the version string exactly, so a local '+cpu' wheel never satisfies it.
  pip_q install "torch===$TORCH_VERSION" || fail "pip: torch===$TORCH_VERSION"
  # After torch, which may pin an old setuptools: pyproject's PEP 639 license needs >= 77.
  pip_q install --upgrade "setuptools>=77" wheel ninja pybind11 numpy || fail "pip: build tools"
  echo "$TORCH_VERSION" > "$STAMP"
else
  step "reusing $VENV"
fi
T_DL=$((SECONDS - T_DL))
TORCH_INFO=$("$VPY" -c "import torch; print(torch.__version__, torch.version.cuda)" 2>&1) ||
  fail "import torch: $TORCH_INFO"
TORCH_CUDA=${TORCH_INFO#* }
[ "$TORCH_CUDA" != "None" ] || fail "torch $TORCH_INFO is a CPU build"
[ "${TORCH_CUDA%%.*}" = "${NVCC_VERSION%%.*}" ] ||
  fail "torch is built with CUDA $TORCH_CUDA but nvcc is $NVCC_VERSION (major versions must match)"
SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
WHEELS=$("$VPY" -m pip list 2>/dev/null | awk 'tolower($1) ~ /^(torch|nvidia-|cuda-toolkit)/ {printf "%s==%s ", $1, $2}')

# The same environment as gpu_check.sh: the nvidia-* wheels' headers on CPATH (the glue
# itself needs none of cublas_v2.h and co., but ATen/cuda/CUDAContext.h would).
fastseq_cuda_env "$VPY"

# ---- copy of the working tree (tracked + untracked, not ignored files) -----------------
step "copying the working tree to $SRC"
mkdir -p "$SRC"
find "$SRC" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf -) | tar -xf - -C "$SRC" || fail "copying the source tree"
SOURCES=$(cd "$SRC" && ls csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu 2>/dev/null | sort)

# ---- build -------------------------------------------------------------------------------
step "building fastseq._C with CUDA (MAX_JOBS=$MAX_JOBS); log: $LOG"
T_BUILD=$SECONDS
(cd "$SRC" && FASTSEQ_CUDA=1 "$VPY" setup.py build_ext --inplace --build-temp "$SRC/build/temp") \
  > "$LOG" 2>&1
RC=$?
T_BUILD=$((SECONDS - T_BUILD))
if [ $RC -ne 0 ]; then
  grep -E -B2 -A12 "error|Error" "$LOG" | head -80
  fail "build exited $RC after ${T_BUILD} s"
fi
SO=$(ls "$SRC"/fastseq/_C*.so 2>/dev/null | head -1)
[ -n "$SO" ] || fail "build produced no fastseq/_C*.so"

# Every source must have gone into the build: a missing object means setup.py skipped it.
MISSING=""
for s in $SOURCES; do
  [ -n "$(find "$SRC/build/temp" -path "*/${s%.*}.o" -print -quit)" ] || MISSING="$MISSING $s"
done
[ -z "$MISSING" ] || fail "no object file for:$MISSING"

# ---- link check ------------------------------------------------------------------------------
step "checking that $SO loads"
# The fused CUDA entry points must be in the module (not just declared).
DEFINED=$(nm -C --defined-only "$SO") || fail "nm $SO"
for sym in fastseq::attention_forward_cuda fastseq::attention_backward_cuda \
    fastseq::lstm::forward_step_cuda fastseq::lstm::backward_step_cuda fastseq::gru_rnn::cuda_backend; do
  grep -q -F " T $sym(" <<< "$DEFINED" || fail "symbol $sym is not defined in $SO"
done
# Device code must be embedded (a fat binary section).
grep -q nv_fatbin <<< "$(readelf -S "$SO")" || fail "$SO carries no CUDA fat binary"
# Importing needs no GPU: libcuda is loaded lazily by the CUDA runtime. RTLD_NOW (Python's
# default for extensions) makes every undefined symbol resolve or the import fail.
IMPORT=$(cd "$WORK" && PYTHONPATH=$SRC "$VPY" -c "
import torch, fastseq, fastseq._C as C
assert C.built_with_cuda(), 'built_with_cuda() is False'
print('fastseq._C', C.__file__, '| built_with_cuda', C.built_with_cuda(), '| cuda available', torch.cuda.is_available())
" 2>&1)
RC=$?
echo "$IMPORT" | tail -5
if [ $RC -ne 0 ]; then
  echo "ldd -r (libraries not found, undefined non-Python symbols):"
  LD_LIBRARY_PATH=$SITE/torch/lib:$SITE/nvidia/cu${TORCH_CUDA%%.*}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
    ldd -r "$SO" 2>&1 | grep -E "not found|undefined symbol" | grep -v -E "undefined symbol: _?Py" | head -20
  fail "import of the CUDA build failed"
fi
echo
echo "== cuda_build_check: OK"
echo "   wheels:   $WHEELS"
echo "   torch:    $TORCH_INFO (venv $VENV; install step ${T_DL} s)"
echo "   nvcc:     $NVCC_VERSION ($CUDA_HOME), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
STEPS=$(grep -c '^\[[0-9]*/[0-9]*\] ' "$LOG")
echo "   compiled: $(echo $SOURCES | wc -w) sources, $STEPS ninja steps this run (0: all up to date), ${T_BUILD} s:" $SOURCES
echo "   module:   $SO ($(du -h "$SO" | cut -f1))"
echo "   link:     import OK (RTLD_NOW), built_with_cuda() True, CUDA entry points defined"
echo "   total:    $((SECONDS - T0)) s"
