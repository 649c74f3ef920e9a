// The persistent thread team of the CPU sequence engine: one OpenMP parallel region for a
// whole run of time steps, the steps separated by a spinning barrier (an atomic counter and
// a generation word) instead of a fork/join per step, and the cost model that decides how
// many threads a step's work is worth.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fastseq {
namespace recurrent {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A reusable barrier for the `size` threads of one team. Waiting spins (a step is a few
// microseconds; a futex wake-up costs more than that), then yields, so that a machine with
// more runnable threads than cores still makes progress instead of burning its time slices.
class StepBarrier {
 public:
  explicit StepBarrier(int size) : size_(size) {}
  void wait() {
    if (size_ == 1) return;
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < kSpinsBeforeYield) cpu_relax();
      else std::this_thread::yield();
    }
  }

 private:
  static constexpr int kSpinsBeforeYield = 1 << 14;
  const int size_;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
};

// Threads worth using for a time step of `macs_per_step` multiply-adds. A thread pays off
// once its share of a step outlasts the barrier that joins it to the others. Measured on
// 2 AMD EPYC cores (LSTM inference, T=100, 1- vs 2-thread team): 2 threads lose below ~8K
// multiply-adds a step (B=1 H=16: 0.71-0.88x, B=1 H=32: 0.96x), tie at ~9K (B=1 H=48) and
// win from 16K (B=1 H=64: 1.16x, B=4 H=64: 1.10x, B=1 H=128: 1.44x, B=1 H=256: 2.2x), so a
// thread is added per 8192 multiply-adds of a step.
// The threshold is a setting (set_min_macs_per_thread; tests set 1 to run the team's
// barrier and work split at every size).
inline std::atomic<int64_t>& min_macs_per_thread() {
  static std::atomic<int64_t> value{int64_t(1) << 13};
  return value;
}

inline int team_size_for(int64_t macs_per_step) {
  const int available = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t per_thread = std::max<int64_t>(1, min_macs_per_thread().load(std::memory_order_relaxed));
  const int64_t useful = std::max<int64_t>(1, macs_per_step / per_thread);
  return static_cast<int>(std::clamp<int64_t>(useful, 1, available));
}

// Runs body(tid, team, barrier) on a team of up to `threads` threads (OpenMP may give fewer:
// the team size is read inside the region, so the work split and the barrier always match
// the threads that really run). body must not throw.
template <class Body>
void run_team(int threads, const Body& body) {
  if (threads <= 1) {
    StepBarrier barrier(1);
    body(0, 1, barrier);
    return;
  }
  StepBarrier* shared = nullptr;
#pragma omp parallel num_threads(threads)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
#pragma omp single
    shared = new StepBarrier(team);  // the implicit barrier after `single` publishes it
    body(tid, team, *shared);
  }
  delete shared;
}

// The contiguous share [begin, end) of n items for thread tid of team.
inline void split_range(int64_t n, int tid, int team, int64_t& begin, int64_t& end) {
  const int64_t base = n / team, extra = n % team;
  begin = tid * base + std::min<int64_t>(tid, extra);
  end = begin + base + (tid < extra ? 1 : 0);
}

}  // namespace recurrent
}  // namespace fastseq
