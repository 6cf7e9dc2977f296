import os
import sys

import pytest
import torch

# Lets tests import the shared float64 reference helpers as `reference`.
sys.path.insert(0, os.path.dirname(__file__))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def _supported_cpu_isas():
    from mini_paged_attn import _C
    return _C.supported_cpu_isas()


@pytest.fixture(params=_supported_cpu_isas())
def isa(request):
    """Runs the test under each instruction-set variant of the CPU kernels
    this machine executes (cpu_isa.h)."""
    from mini_paged_attn import _C
    before = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(before)
