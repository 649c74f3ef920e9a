// Includes ATen's SIMD vectors (at::vec) for the ISA this file is compiled for. ATen only
// enables its AVX2 / AVX512 Vectorized specialisations under CPU_CAPABILITY_* macros that
// its own build sets per kernel file; an extension must set them itself, before any ATen
// vec header, or it silently gets the scalar fallback. The namespace names match ATen's.
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512 1
#define CPU_CAPABILITY AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2 1
#define CPU_CAPABILITY AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
