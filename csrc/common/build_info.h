// What this build of fastseq._C contains, for `fastseq info` and clear errors in Python.
#pragma once

namespace fastseq {

inline bool built_with_cuda() {
#ifdef FASTSEQ_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace fastseq
