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
