"""Builds the single extension ``mini_paged_attn._C``.

CPU sources are always compiled. CUDA sources in ``csrc/kernels`` are added
when the installed torch was built with CUDA and a CUDA toolkit is found
(``MINI_PAGED_ATTN_FORCE_CPU=1`` skips them).
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


sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
define_macros = []
if _with_cuda():
    extension = cpp_extension.CUDAExtension
    sources += _sources("csrc/kernels/*.cu")
    define_macros.append(("MINI_PAGED_ATTN_WITH_CUDA", None))
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
