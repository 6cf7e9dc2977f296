"""Builds the single extension ``mini_paged_attn._C`` with CMake (CMakeLists.txt).

setuptools' build_ext step configures and builds CMakeLists.txt in
``build/cmake`` (kept, so a rebuild, an editable install and a wheel share the
compiled objects) and copies the module where setuptools wants it. What is
built is CMakeLists.txt's business: CPU sources always, the CUDA sources in
``csrc/kernels`` when the installed torch has CUDA and nvcc is found
(``MINI_PAGED_ATTN_FORCE_CPU=1`` skips them), compute capability 9.0 as sm_90a.

    MAX_JOBS=N                parallel compile jobs (default: the CPU count)
    TORCH_CUDA_ARCH_LIST=...  GPU architectures in torch's notation; unset, the
                              visible GPUs' (CMakeLists.txt's default, 9.0, without any)
    MINI_PAGED_ATTN_BUILD_DIR the CMake build directory (default build/cmake)
    CMAKE_ARGS="..."          more arguments for CMake's configure step
"""
import glob
import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _tool(name):
    """``name`` on the PATH, else next to the interpreter (the cmake and ninja wheels)."""
    found = shutil.which(name)
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.access(beside, os.X_OK) else None


def _visible_arch_list():
    """The visible GPUs' compute capabilities in torch's notation, or None."""
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        return None
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cmake = _tool("cmake")
        if cmake is None:
            raise RuntimeError("building mini_paged_attn needs CMake >= 3.18 "
                               "(pip install cmake, or the system's package)")
        build_dir = os.environ.get("MINI_PAGED_ATTN_BUILD_DIR",
                                   os.path.join(ROOT, "build", "cmake"))
        configure = [cmake, "-S", ROOT, "-B", build_dir, f"-DPython_EXECUTABLE={sys.executable}"]
        ninja = _tool("ninja")
        if ninja and not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or _visible_arch_list()
        if archs:
            configure.append(f"-DTORCH_CUDA_ARCH_LIST={archs}")
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        # Configured every time: CMake re-reads the settings and rebuilds only what changed.
        subprocess.run(configure, check=True)
        subprocess.run([cmake, "--build", build_dir, "-j", jobs], check=True)
        built = glob.glob(os.path.join(build_dir, "mini_paged_attn", "_C*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one module in {build_dir}/mini_paged_attn, found {built}")
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(built[0], target)


setup(
    ext_modules=[Extension("mini_paged_attn._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
