// FASTSEQ_HOST_DEVICE lets one inline formula serve the CPU loops and the CUDA kernels,
// so the CPU tests exercise the exact math the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define FASTSEQ_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTSEQ_HOST_DEVICE inline
#endif
