#include "mini_paged_attn/cpu_isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>

namespace mini_paged_attn::cpu {
namespace {

CpuIsa best_supported() {
#if MPA_CPU_VARIANTS
  if (__builtin_cpu_supports("x86-64-v4")) return CpuIsa::kV4;
  if (__builtin_cpu_supports("x86-64-v3")) return CpuIsa::kV3;
#endif
  return CpuIsa::kBaseline;
}

CpuIsa parse(const std::string& name, const char* source) {
  for (CpuIsa isa : {CpuIsa::kBaseline, CpuIsa::kV3, CpuIsa::kV4}) {
    if (name == cpu_isa_name(isa)) {
      TORCH_CHECK_VALUE(isa <= best_supported(), source, ": ", name,
                        " is beyond this CPU (it runs up to ", cpu_isa_name(best_supported()),
                        ")");
      return isa;
    }
  }
  TORCH_CHECK_VALUE(false, source, " must be baseline, x86-64-v3 or x86-64-v4, got '", name,
                    "'");
}

std::atomic<int>& active() {
  static std::atomic<int> isa{[] {
    const char* env = std::getenv("MINI_PAGED_ATTN_CPU_ISA");
    return static_cast<int>(env && *env ? parse(env, "MINI_PAGED_ATTN_CPU_ISA")
                                        : best_supported());
  }()};
  return isa;
}

}  // namespace

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(active().load(std::memory_order_relaxed)); }

std::string cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kV4: return "x86-64-v4";
    case CpuIsa::kV3: return "x86-64-v3";
    default: return "baseline";
  }
}

void set_cpu_isa(const std::string& name) {
  active().store(static_cast<int>(parse(name, "isa")), std::memory_order_relaxed);
}

std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> names;
  for (int i = 0; i <= static_cast<int>(best_supported()); ++i) {
    names.push_back(cpu_isa_name(static_cast<CpuIsa>(i)));
  }
  return names;
}

}  // namespace mini_paged_attn::cpu
