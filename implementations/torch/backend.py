"""lambda_bench.backend.Backend for PyTorch: NumPy float32 NHWC and canonical weights at the boundary,
torch NCHW and (out, in, 1, 1) projection kernels inside."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from lambda_bench.specs import LambdaSpec
from lambda_bench.weights import lambda_shapes, validate

from .lambda_layer import LambdaLayer

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class FrameworkBackend:
    name = "torch"

    def configure(self, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")

    def build(self, spec: LambdaSpec, seed: int = 0) -> LambdaLayer:
        return LambdaLayer(spec, seed).to(DEVICE)

    def load_weights(self, model: LambdaLayer, weights: Mapping[str, np.ndarray]) -> None:
        validate(model.spec, weights)
        model.load_canonical(weights)

    def export_weights(self, model: LambdaLayer) -> dict[str, np.ndarray]:
        return model.export_canonical()

    def forward(self, model: LambdaLayer, x: np.ndarray, train: bool = False) -> np.ndarray:
        model.spec.check_input(np.shape(x), "NHWC")  # before the permute, which assumes rank 4
        model.train(train)
        with torch.no_grad():
            y = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(DEVICE)
                      .permute(0, 3, 1, 2).contiguous())
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def forward_backward(self, model: LambdaLayer, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        spec = model.spec
        b, height, width = spec.check_input(np.shape(x), "NHWC")
        out_shape = (b, *spec.output_size(height, width), spec.d_out)
        if tuple(np.shape(cotangent)) != out_shape:  # checked before the step touches the running stats
            raise ValueError(f"cotangent shape={tuple(np.shape(cotangent))}: the output is {out_shape} (NHWC)")
        model.train(True)
        x_t = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(DEVICE)
               .permute(0, 3, 1, 2).contiguous().requires_grad_())
        cot = torch.from_numpy(np.ascontiguousarray(cotangent, dtype=np.float32)).to(DEVICE).permute(0, 3, 1, 2)
        with torch.enable_grad():
            y = model(x_t)
        # the gradient of sum(y * cotangent) is the vector-Jacobian product with the cotangent;
        # autograd.grad leaves every .grad untouched, so calls do not accumulate
        params = dict(model.named_parameters())
        d_x, *d_params = torch.autograd.grad(y, [x_t, *params.values()], grad_outputs=cot)
        shapes = lambda_shapes(spec)
        grads = {"input": d_x.permute(0, 2, 3, 1).contiguous().cpu().numpy()}
        for name, g in zip(params, d_params):
            grads[name] = g.cpu().numpy().reshape(shapes[name])
        return y.detach().permute(0, 2, 3, 1).contiguous().cpu().numpy(), grads

    def device_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"framework": self.name, "version": torch.__version__, "device": str(DEVICE),
                                "threads": torch.get_num_threads()}
        if DEVICE.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(DEVICE)
        return info


BACKEND = FrameworkBackend()
