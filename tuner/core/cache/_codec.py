"""How a feature set stores its tensors: as float16/float32 arrays, or as int8 with one
float16 scale per row (per token, for tokens laid out (h, w, C)).

int8 halves float16's bytes, which is what lets a Cityscapes-sized frozen prefix fit a cache
limit that float16 overflows (`tuner plan` chooses it when needed). Its error is measured in
bench/README.md ("cache --scale"). A feature passes through `round_trip` on a miss too, so a
trial's result does not depend on whether its features were computed or read.

    >>> import torch
    >>> codec = Codec.of("int8")
    >>> x = torch.randn(4, 8)
    >>> array = codec.encode(x)
    >>> array.dtype.name, array.shape  # 8 int8 values and a 2-byte scale per row
    ('int8', (4, 10))
    >>> bool((codec.decode(array) - x).abs().max() <= x.abs().max() / 127)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where a tensor is encoded: `tuner studies` lists sizes without it
    import torch

_FLOATS = ("float16", "float32")
_SCALE_BYTES = 2  # one float16 scale per row, stored as the row's last two int8 values
_SMALLEST_SCALE = 2**-24  # float16's smallest subnormal: an all-zero row stays zero


@dataclass(frozen=True)
class Codec:
    name: str  # float16 | float32 | int8

    @classmethod
    def of(cls, dtype: torch.dtype | str) -> Codec:
        name = str(dtype).removeprefix("torch.")
        if name not in (*_FLOATS, "int8"):
            raise ValueError(f"feature storage dtype {dtype!r}: expected float16, float32 or int8")
        return cls(name)

    @property
    def array_dtype(self) -> np.dtype:
        return np.dtype(self.name)

    def encode(self, tensor: torch.Tensor) -> np.ndarray:
        import torch

        tensor = tensor.detach().to("cpu")
        if self.name in _FLOATS:
            return tensor.to(getattr(torch, self.name)).contiguous().numpy()
        x = tensor.float()
        exact = (x.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(_SMALLEST_SCALE)
        scale = exact.half()
        # Rounded up, never down, so that |x| / scale <= 127 and no value is clipped.
        low = scale.float() < exact
        scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, torch.inf)), scale)
        q = torch.round(x / scale.float()).clamp(-127, 127).to(torch.int8)
        return torch.cat([q, scale.view(torch.int8)], dim=-1).contiguous().numpy()

    def decode(self, array: np.ndarray) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.name in _FLOATS:
            return tensor
        q, scale = tensor[..., :-_SCALE_BYTES], tensor[..., -_SCALE_BYTES:]
        return q.float() * scale.contiguous().view(torch.float16).float()

    def round_trip(self, tensor: torch.Tensor) -> torch.Tensor:
        """What a reader of this entry gets back."""
        return self.decode(self.encode(tensor))

    def entry_bytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of one stored entry of `shape` (array and .npy header), for planning."""
        *rows, last = shape
        if self.name == "int8":
            last += _SCALE_BYTES
        return int(np.prod([*rows, last])) * self.array_dtype.itemsize + HEADER_BYTES


HEADER_BYTES = 128  # a .npy file's header
