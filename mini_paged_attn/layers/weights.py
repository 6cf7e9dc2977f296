"""Weight loading helpers shared by the sharded layers. A parameter may carry a
``weight_loader(param, full_tensor, shard)`` that copies its rank's part of a
checkpoint tensor and returns how many of its elements that filled, and a
``full_shape`` (the unsharded shape, for random initialisation)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


def check_shape(loaded: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(loaded.shape) != tuple(expected):
        raise ValueError(f"has shape {tuple(loaded.shape)}, the model expects {tuple(expected)}")


def load_whole(param: nn.Parameter, loaded: torch.Tensor, shard: Optional[int] = None) -> int:
    """The default loader: a replicated parameter takes the whole tensor."""
    check_shape(loaded, param.shape)
    param.data.copy_(loaded)
    return param.numel()


def weight_loader(param: nn.Parameter):
    return getattr(param, "weight_loader", load_whole)


def full_shape(param: nn.Parameter) -> Sequence[int]:
    return getattr(param, "full_shape", param.shape)


def sharded_parameter(shape: Sequence[int], full: Sequence[int], loader) -> nn.Parameter:
    """An (uninitialised) parameter of this rank's ``shape``, part of one of ``full``."""
    param = nn.Parameter(torch.empty(tuple(shape)))
    param.weight_loader = loader
    param.full_shape = tuple(full)
    return param
