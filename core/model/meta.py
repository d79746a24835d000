"""Building models without weights: on the meta device (shapes only), and the stem replacement
for other input channels."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from torch import nn

# ---- builders -----------------------------------------------------------------------------


def replace_stem(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the model's first convolution `in_channels` inputs (same kernel, stride, padding)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
            return model
    return model


# ---- building on `meta` -------------------------------------------------------------------


_META_LOCK = threading.Lock()
_META_THREAD = threading.local()
_META_USERS = [0]  # threads inside _empty_weights; the patch is installed while > 0
_ORIGINAL = (nn.Module.register_parameter, nn.Module.register_buffer)


def _meta_parameter(self, name, param):
    if getattr(_META_THREAD, "active", False) and param is not None:
        if param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    _ORIGINAL[0](self, name, param)


def _meta_buffer(self, name, tensor, persistent=True):
    if getattr(_META_THREAD, "active", False) and tensor is not None:
        tensor = tensor.to("meta")
    _ORIGINAL[1](self, name, tensor, persistent)


@contextlib.contextmanager
def _empty_weights() -> Iterator[None]:
    """Parameters and buffers go to `meta` as they are registered, while plain tensor
    arithmetic in a builder (RegNet computes its widths with torch) still runs on the CPU.
    Only the calling thread is affected: models built meanwhile by other threads are real."""
    with _META_LOCK:
        if _META_USERS[0] == 0:
            nn.Module.register_parameter, nn.Module.register_buffer = _meta_parameter, _meta_buffer
        _META_USERS[0] += 1
    _META_THREAD.active = True
    try:
        yield
    finally:
        _META_THREAD.active = False
        with _META_LOCK:
            _META_USERS[0] -= 1
            if _META_USERS[0] == 0:
                nn.Module.register_parameter, nn.Module.register_buffer = _ORIGINAL


_SHAPES_10_3: dict[str, dict[str, tuple[int, ...]]] = {}  # the build above, kept for reuse
