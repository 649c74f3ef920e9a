// Include FIRST in CPU kernel files that use at::vec: selects the ISA specialisation of
// at::vec::Vectorized matching this build's -march (torch's headers only pick one when
// CPU_CAPABILITY_* is defined; otherwise Vectorized is a plain scalar array). Sleef, which
// the AVX2/AVX512 versions call, is exported by libtorch_cpu.
#pragma once

#if !defined(CPU_CAPABILITY)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512 1
#define CPU_CAPABILITY fastseq_avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2 1
#define CPU_CAPABILITY fastseq_avx2
#else
#define CPU_CAPABILITY fastseq_default
#endif
#endif

#include <ATen/cpu/vec/vec.h>
