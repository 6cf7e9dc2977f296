"""Host data to the GPU without a host sync: through pinned memory with a
non-blocking copy (a copy from pageable memory waits for the stream)."""
from __future__ import annotations

from typing import Sequence, Union

import torch


def to_device(data: Union[Sequence, torch.Tensor], dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    """``data`` (a list, or a tensor on any device) as a ``dtype`` tensor on ``device``."""
    t = data if isinstance(data, torch.Tensor) else torch.tensor(data, dtype=dtype)
    if t.device.type != "cpu" or device.type == "cpu":
        return t.to(device, dtype)
    return t.to(dtype).pin_memory().to(device, non_blocking=True)
