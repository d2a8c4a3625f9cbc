"""lambda_bench.backend.Backend for PyTorch: NumPy float32 NHWC and canonical weights at the boundary,
torch NCHW and (out, in, 1, 1) projection kernels inside."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lambda_bench import families
from lambda_bench.measure import steps
from lambda_bench.weights import shapes, validate

from ._numerics import as_float, at_least_fp32, build_in


def model_class(spec: Any) -> type:
    """The module class that builds ``spec``: its family's implementation file in this package
    (lambda_bench.families), imported on demand."""
    return families.implementation_class(spec, __package__)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


_FLOP_COUNTER_NOTE = ("counts matrix products and convolutions (mm, addmm, bmm, baddbmm, einsum as the bmm it "
                      "decomposes into, convolution), 2 per multiply-add; not elementwise ops, activations, "
                      "softmax, pooling, BatchNorm or residual adds")


class TorchStep:
    """One measured step of a case (lambda_bench.measure.steps.Step): the model, its batch (already on the
    device, NCHW) and, in train mode, its SGD-with-momentum optimizer. Made by FrameworkBackend.prepare.

    compile "compiled": torch.compile of the model (inductor); loss, backward and the optimizer step
    stay eager. ``traces`` counts the graphs dynamo hands to this step's backend: 1 after the first
    step without graph breaks, one more per recompilation. Caveat: dynamo's recompile limit (8 per code
    object) still applies within a process, so interleaving steps of more than 8 live compiled steps of
    one model class can make some of them fall back to eager silently (traces then stays put).
    """

    def __init__(self, model: nn.Module, case: Any, *, mode: str, precision: str, compile: str,
                 device: torch.device, seed: int):
        # "cpu" / "cuda" as the harness names them, or a torch.device
        self.case, self.mode, self.precision, self.compile, self.device = case, mode, precision, compile, torch.device(device)
        self.model = model  # uncompiled: count_flops runs it, and it holds the parameters
        self._traces = 0
        if compile == "compiled":
            # dynamo caches compiled code per code object (ResNet.forward, ...) and falls back to eager,
            # silently, past config.recompile_limit (8) entries: without a reset, the ninth case of a
            # family compiled in one process would run eager. Each compiled step starts clean; a step
            # prepared before this one recompiles on its next call (its traces count that).
            torch.compiler.reset()
            self._forward = torch.compile(model, backend=self._counting_backend)
        else:
            self._forward = model
        x, labels = steps.synthetic_batch(case, seed)
        # once, before any timing: step() copies nothing from the host; in the model's dtype (float64 for
        # the float64 training stage of lambda_bench.equivalence)
        dtype = next(model.parameters()).dtype
        self._x = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype).permute(0, 3, 1, 2).contiguous()
        self._labels = None if labels is None else torch.from_numpy(labels).to(device=device, dtype=torch.long)
        self._optimizer = None
        if mode == "train":
            model.train()
            self._optimizer = torch.optim.SGD(model.parameters(), lr=steps.LEARNING_RATE, momentum=steps.MOMENTUM)
            if self._labels is None:  # a layer: the backward computes its input's gradient too (steps)
                self._x.requires_grad_(True)
        else:
            model.eval()
        self._loss: torch.Tensor | None = None
        self._out: torch.Tensor | None = None

    # --- the contract (lambda_bench.measure.steps.Step) ---------------------------------------------

    @property
    def traces(self) -> int:
        return self._traces

    def step(self) -> None:
        self._out = None  # the previous output is not kept alive into this step (its peak memory)
        if self.mode == "infer":
            with torch.inference_mode(), self._autocast():
                self._out = self._forward(self._x)
        else:
            self._optimizer.zero_grad(set_to_none=True)
            self._x.grad = None
            with self._autocast():
                out = self._forward(self._x)
                loss = self._loss_of(out)
            loss.backward()
            clip_gradients([p.grad for p in self.model.parameters() if p.grad is not None])
            self._optimizer.step()
            self._out, self._loss = out.detach(), loss.detach()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def loss(self) -> float:
        """The latest train step's loss (NaN in infer mode, or before the first step)."""
        if self._loss is None:
            return math.nan
        return float(self._loss)

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> tuple[int | None, str]:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "torch.cuda.max_memory_allocated"
        return None, ""

    def count_flops(self) -> dict[str, Any]:
        """One forward of the batch (eval, inference mode, fp32, uncompiled) under FlopCounterMode.
        The module's train/eval mode is restored afterwards, so the step does not recompile."""
        from torch.utils.flop_counter import FlopCounterMode

        training = self.model.training
        self.model.eval()
        try:
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), counter:
                self.model(self._x.detach())  # a layer's train input requires grad: the counter's hooks reject it
        finally:
            self.model.train(training)
        return {"flops": int(counter.get_total_flops()), "counter": "torch FlopCounterMode",
                "note": _FLOP_COUNTER_NOTE}

    def _output(self) -> np.ndarray:
        """The latest step's forward output as NumPy float32, NHWC (for tests)."""
        if self._out is None:
            raise RuntimeError("no step has run yet")
        return _from_native(self._out)

    def _input_gradient(self) -> np.ndarray | None:
        """The latest train step's gradient of the input, NHWC (a layer's; None for a model, for tests)."""
        return None if self._x.grad is None else _from_native(self._x.grad)

    def _weights(self) -> dict[str, np.ndarray]:
        # copies: on CPU a model's export may be a view of the live parameters, which the next step changes
        return {name: np.array(value) for name, value in self.model.export_canonical().items()}

    # --- helpers ------------------------------------------------------------------------------------

    def _counting_backend(self, gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        """Inductor, counting each graph dynamo hands it (a first compile, a recompilation, or a
        graph after a graph break)."""
        self._traces += 1
        return torch._dynamo.lookup_backend("inductor")(gm, example_inputs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss_of(self, out: torch.Tensor) -> torch.Tensor:
        if self._labels is not None:  # a model: logits (b, classes); cross-entropy in float32 at least
            return F.cross_entropy(at_least_fp32(out), self._labels)
        return 0.5 * at_least_fp32(out).square().mean()  # a layer: a synthetic regression loss


def clip_gradients(grads: list) -> list:
    """Every gradient times GRADIENT_CLIP_NORM / max(global L2 norm, GRADIENT_CLIP_NORM), in place
    (the parameters' .grad, which the optimizer reads); returned, as TensorFlow's and JAX's return theirs."""
    if not grads:
        return grads
    norm = torch.sqrt(sum((at_least_fp32(g) ** 2).sum() for g in grads))
    scale = steps.GRADIENT_CLIP_NORM / torch.clamp(norm, min=steps.GRADIENT_CLIP_NORM)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return grads


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
        return build_in(lambda: model_class(spec)(spec, seed), dtype).to(device=DEVICE)

    def prepare(self, case: Any, *, mode: str = "infer", precision: str = "fp32", compile: str = "eager",
                device: str = "cpu", seed: int = 0, implementation: str = "ours") -> TorchStep:
        """The measured step of ``case`` (lambda_bench.measure.steps): model and batch on ``device``;
        ``implementation`` a peer's layer (implementations/torch/peers.py) instead of ours."""
        steps.check_options(self.name, mode, precision, compile, device)
        if device == "tpu":
            raise steps.Unsupported("device='tpu': this torch backend has no TPU support (no torch_xla path)")
        if device == "cuda" and not torch.cuda.is_available():
            raise steps.Unsupported("device='cuda': torch.cuda.is_available() is False "
                                    f"(no CUDA device or a CPU-only build, torch {torch.__version__})")
        self.configure()  # TF32 off: fp32 means fp32
        target = torch.device(device)
        if implementation == "ours":
            model = self.build(case.spec, seed).to(target)
        else:
            from .peers import PeerLayer
            model = PeerLayer(implementation, case.spec, seed).to(target)
        return TorchStep(model, case, mode=mode, precision=precision, compile=compile, device=target, seed=seed)

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
    """A tensor -> NumPy NHWC (or (b, classes)), float64 kept, anything else float32."""
    t = t.detach()
    return as_float((t.permute(0, 2, 3, 1) if t.ndim == 4 else t).contiguous())


BACKEND = FrameworkBackend()
