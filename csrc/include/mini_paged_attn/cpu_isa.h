// Instruction-set variants of the CPU kernels. Each kernel is compiled once
// per x86-64 level (MPA_TARGET_V4 / MPA_TARGET_V3 / plain) and called through
// the variant of the active level: the best this CPU runs, unless the
// environment variable MINI_PAGED_ATTN_CPU_ISA or set_cpu_isa() chose a lower
// one (so tests can run every variant the machine executes). Elsewhere than
// x86-64 with GCC there is one variant, "baseline".
#pragma once

#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MPA_CPU_VARIANTS 1
#define MPA_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define MPA_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define MPA_CPU_VARIANTS 0
#endif

namespace mini_paged_attn::cpu {

enum class CpuIsa { kBaseline = 0, kV3 = 1, kV4 = 2 };

CpuIsa active_cpu_isa();
std::string cpu_isa_name(CpuIsa isa);
// "baseline", "x86-64-v3" or "x86-64-v4"; ValueError naming the argument if
// unknown or beyond this CPU.
void set_cpu_isa(const std::string& name);
// The levels this CPU runs, lowest first.
std::vector<std::string> supported_cpu_isas();

// The variant of `f` for the active level: f(v4, v3, baseline).
template <typename Fn>
Fn pick_variant(Fn v4, Fn v3, Fn baseline) {
  switch (active_cpu_isa()) {
    case CpuIsa::kV4: return v4;
    case CpuIsa::kV3: return v3;
    default: return baseline;
  }
}

}  // namespace mini_paged_attn::cpu
