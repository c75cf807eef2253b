"""`Conv1d` that runs on PyTorch's native CPU kernels (im2col + GEMM) instead of oneDNN's.

On the CPUs we train on, oneDNN's backward of the wide 1-D convolutions of these models is slow at
small batches: at batch 1-2 a WaveNet layer of the v3/v4 `wns1` (512 -> 1024 channels, kernel 5)
takes 3-25% longer forward and backward than PyTorch's native kernels, the DiT's grouped position
convolution (1024 channels, 16 groups, kernel 31) 30-50% longer (one thread, fp32, 100-1500 frames).
At larger batches it is the other way round, up to 10x (batch 16, 187 frames, ungrouped), so
`Conv1d` takes the native path only for batches of at most `NATIVE_MAX_BATCH` fp32 CPU items outside
autocast; anything else (larger batches, GPUs, bf16/fp16, dilation) is `nn.Conv1d`'s.
`benchmarks/bench_cpu_conv.py` measures both at batch 1-16 on the machine at hand. Same parameters
and state-dict keys as `nn.Conv1d`; outputs equal up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Largest batch given to the native kernels (see above).
NATIVE_MAX_BATCH = 2


@contextmanager
def _onednn_disabled() -> Iterator[None]:
    # Process-wide switch, so it is only held around the convolution calls below. The autograd
    # engine runs a CPU backward on the thread that called backward(), like the forward. Not
    # torch.backends.mkldnn.flags(): it also sets oneDNN's other options and warns about TF32 on
    # every entry of a CPU-only build.
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


class _NativeConv1d(torch.autograd.Function):
    """conv1d whose forward and backward both run with oneDNN switched off."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):
        with _onednn_disabled():
            out = F.conv1d(x, weight, bias, stride, padding, 1, groups)
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, groups, None if bias is None else bias.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, groups, bias_shape = ctx.conv
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                  bias_shape is not None and ctx.needs_input_grad[2]]
        with _onednn_disabled():
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_shape, [stride], [padding], [1], False, [0], groups, wanted)
        return grad_x, grad_w, grad_b, None, None, None


def native_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dim() == 3 and x.shape[0] <= NATIVE_MAX_BATCH
            and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))


class Conv1d(nn.Conv1d):
    """`nn.Conv1d` that uses `_NativeConv1d` for small fp32 CPU batches (zero padding, no dilation)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                      ) -> torch.Tensor:
        if (self.padding_mode != "zeros" or self.dilation != (1,) or isinstance(self.padding, str)
                or not native_path(input, weight)):
            return super()._conv_forward(input, weight, bias)
        return _NativeConv1d.apply(input, weight, bias, self.stride[0], self.padding[0], self.groups)
