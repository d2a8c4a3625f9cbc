"""lambda_bench.backend.Backend for PyTorch: NumPy float32 NHWC and canonical weights at the boundary,
torch NCHW and (out, in, 1, 1) projection kernels inside."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from lambda_bench import specs
from lambda_bench.weights import shapes, validate

from .lambda_layer import LambdaLayer

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def model_class(spec: Any) -> type:
    """The module class that builds ``spec`` (imported on demand: one file per family)."""
    if isinstance(spec, specs.LambdaSpec):
        return LambdaLayer
    if isinstance(spec, specs.AttentionSpec):
        from .attention import attention_class
        return attention_class(spec)
    if isinstance(spec, specs.ResNetSpec):
        from .resnet import ResNet
        return ResNet
    if isinstance(spec, specs.EfficientNetSpec):
        from .efficientnet import EfficientNet
        return EfficientNet
    raise ValueError(f"spec of type {type(spec).__name__}: torch cannot build it")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FrameworkBackend:
    name = "torch"

    def configure(self, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")

    def build(self, spec: Any, seed: int = 0, dtype: str = "float32") -> nn.Module:
        """dtype "float64" serves as the anchor of whole-model equivalence checks."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
        return model_class(spec)(spec, seed).to(device=DEVICE, dtype=DTYPES[dtype])

    def load_weights(self, model: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
        validate(model.spec, weights)
        model.load_canonical(weights)

    def export_weights(self, model: nn.Module) -> dict[str, np.ndarray]:
        return model.export_canonical()

    def forward(self, model: nn.Module, x: np.ndarray, train: bool = False) -> np.ndarray:
        model.spec.check_input(np.shape(x), "NHWC")  # before the permute, which assumes rank 4
        model.train(train)
        with torch.no_grad():
            return _from_native(model(_to_native(model, x)))

    def forward_backward(self, model: nn.Module, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        spec = model.spec
        out_shape = spec.output_shape(*spec.check_input(np.shape(x), "NHWC"))
        if tuple(np.shape(cotangent)) != out_shape:  # checked before the step touches the running stats
            raise ValueError(f"cotangent shape={tuple(np.shape(cotangent))}: the output is {out_shape} (NHWC)")
        model.train(True)
        x_t = _to_native(model, x).requires_grad_()
        cot = _to_native(model, cotangent)
        with torch.enable_grad():
            y = model(x_t)
        # the gradient of sum(y * cotangent) is the vector-Jacobian product with the cotangent;
        # autograd.grad leaves every .grad untouched, so calls do not accumulate
        params = dict(model.named_parameters())
        d_x, *d_params = torch.autograd.grad(y, [x_t, *params.values()], grad_outputs=cot)
        canonical_shapes = shapes(spec)
        grads = {"input": _from_native(d_x)}
        for name, g in zip(params, d_params):
            grads[name] = g.cpu().numpy().reshape(canonical_shapes[name])
        return _from_native(y.detach()), grads

    def device_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"framework": self.name, "version": torch.__version__, "device": str(DEVICE),
                                "threads": torch.get_num_threads()}
        if DEVICE.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(DEVICE)
        return info


def _to_native(model: nn.Module, a: np.ndarray) -> torch.Tensor:
    """NumPy NHWC (or (b, classes)) -> a tensor in the model's dtype and device, NCHW."""
    dtype = next(model.parameters()).dtype
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device=DEVICE, dtype=dtype)
    return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t


def _from_native(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).contiguous().cpu().numpy()


BACKEND = FrameworkBackend()
