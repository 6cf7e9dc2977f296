"""Builds the single extension ``mini_paged_attn._C``.

CPU sources are always compiled. CUDA sources in ``csrc/kernels`` are added
when the installed torch was built with CUDA and a CUDA toolkit is found
(``MINI_PAGED_ATTN_FORCE_CPU=1`` skips them).

Compute capability 9.0 is built as sm_90a (its wgmma prefill kernel needs the
architecture-specific instructions); sm_90a code runs on every 9.0 GPU.
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _with_cuda():
    import torch

    if os.environ.get("MINI_PAGED_ATTN_FORCE_CPU") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _sm90a_arch_list():
    """Sets TORCH_CUDA_ARCH_LIST with 9.0 as 9.0a; True when the list has 9.0a.

    An unset list becomes the visible GPUs' capabilities, as torch would pick.
    "9.0+PTX" keeps its portable PTX beside the sm_90a code.
    """
    import torch

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs is None:
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        archs = ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
    out = []
    for arch in archs.replace(" ", ";").split(";"):
        if arch == "9.0":
            arch = "9.0a"
        elif arch == "9.0+PTX":
            out.append("9.0a")
        if arch:
            out.append(arch)
    if out:
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(out)
    return "9.0a" in out


sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
define_macros = []
if _with_cuda():
    extension = cpp_extension.CUDAExtension
    sources += _sources("csrc/kernels/*.cu")
    define_macros.append(("MINI_PAGED_ATTN_WITH_CUDA", None))
    if _sm90a_arch_list():
        define_macros.append(("MINI_PAGED_ATTN_SM90A", None))
    extra_compile_args = {
        "cxx": cxx_flags,
        "nvcc": ["-O3", "-std=c++17", "-lineinfo"],
    }
else:
    extension = cpp_extension.CppExtension
    extra_compile_args = {"cxx": cxx_flags}

setup(
    ext_modules=[
        extension(
            name="mini_paged_attn._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc", "include")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
