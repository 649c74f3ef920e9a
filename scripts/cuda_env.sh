# Sourced by scripts/cuda_build_check.sh and scripts/gpu_check.sh (bash): sets up the
# environment a CUDA build of fastseq._C needs, for the Python (holding torch) given as $1.
#  - CUDA_HOME, when unset, from nvcc itself: nvcc may be a wrapper script (as
#    /usr/local/bin/nvcc is on the developers' machines), where torch's guess of the toolkit
#    (the directory above nvcc's) is wrong and its headers and libcudart are not found.
#  - CPATH gains the include directories of the pip nvidia-* wheels next to that Python's
#    torch (cublas_v2.h, cusparse.h, cusolverDn.h, curand.h, cufft.h, which ATen's CUDA
#    headers include): a toolkit with only nvcc and the runtime lacks them. CPATH is searched
#    after every -I, so a full toolkit's own headers still win.
# Prints nothing; returns non-zero when no nvcc is found.
fastseq_cuda_env() {
  local py=${1:-} nvcc top site d incs=""
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    nvcc=$CUDA_HOME/bin/nvcc
  else
    nvcc=$(command -v nvcc) || return 1
    top=$("$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
    CUDA_HOME=$(readlink -f "${top:-$(dirname "$nvcc")/..}")
  fi
  export CUDA_HOME
  export PATH=$CUDA_HOME/bin:$PATH
  [ -n "$py" ] || return 0
  site=$("$py" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))" 2>/dev/null) ||
    return 0
  # CUDA >= 13 wheels share nvidia/cu13/include; 12.x ones have nvidia/<lib>/include.
  for d in "$site"/nvidia/cu[0-9]*/include "$site"/nvidia/{cuda_runtime,cuda_nvrtc,cublas,cusparse,cusolver,curand,cufft,nvtx}/include; do
    [ -d "$d" ] && incs=${incs:+$incs:}$d
  done
  [ -z "$incs" ] || export CPATH=$incs${CPATH:+:$CPATH}
  return 0
}
