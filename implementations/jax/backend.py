"""The harness boundary for JAX: NumPy float32 NHWC and canonical weights in, the flax.nnx layer inside.

The layer converts its own weights to and from the canonical layout (load_canonical / export_canonical);
gradients go through the same conversion here.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from implementations.jax.lambda_layer import LambdaLayer
from lambda_bench import specs
from lambda_bench import weights as canonical


def model_class(spec: Any) -> type:
    """The module class that builds ``spec`` (imported on demand: one file per family)."""
    if isinstance(spec, specs.LambdaSpec):
        return LambdaLayer
    if isinstance(spec, specs.AttentionSpec):
        from implementations.jax.attention import attention_class
        return attention_class(spec)
    if isinstance(spec, specs.ResNetSpec):
        from implementations.jax.resnet import ResNet
        return ResNet
    if isinstance(spec, specs.EfficientNetSpec):
        from implementations.jax.efficientnet import EfficientNet
        return EfficientNet
    raise ValueError(f"spec of type {type(spec).__name__}: jax cannot build it")

def _backends_initialised() -> bool:
    from jax._src import xla_bridge  # private, but the only way to ask; XLA reads XLA_FLAGS once

    return xla_bridge.backends_are_initialized()


# Compiled once per model structure and input shape: op-by-op dispatch compiles every primitive on
# its own, which costs more than the whole program on CPU. The model's BatchStat updates made inside
# are carried out by nnx.jit.
@functools.partial(nnx.jit, static_argnums=2)
def _forward(model: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
    return model(x, train=train)


@nnx.jit
def _forward_backward(model: nnx.Module, x: jax.Array, cotangent: jax.Array):
    def loss(model, x):
        y = model(x, train=True)  # updates the BatchStat running statistics
        return jnp.sum(y * cotangent), y

    grad_fn = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)  # model: its nnx.Params
    (_, y), (param_grads, input_grad) = grad_fn(model, x)
    return y, param_grads, input_grad


class FrameworkBackend:
    name = "jax"

    def __init__(self) -> None:
        self.threads = "default (every core the process may use)"

    def configure(self, threads: int | None = None) -> None:
        jax.config.update("jax_default_matmul_precision", "highest")
        if threads is None:
            return
        if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
            raise ValueError(f"threads={threads!r}: must be a positive integer")
        # XLA has no flag for an exact CPU thread count (intra_op_parallelism_threads is a TensorFlow
        # option, not an XLA flag); the one real knob is single-threaded Eigen, read at backend start.
        if _backends_initialised():
            self.threads = f"{threads} requested, not applied: jax had already initialised its backends"
        elif threads == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
            self.threads = "1 (--xla_cpu_multi_thread_eigen=false)"
        else:
            self.threads = f"{threads} requested, not applied: XLA has no such flag (limit cores with taskset)"

    def build(self, spec: Any, seed: int = 0) -> nnx.Module:
        return model_class(spec)(spec, seed)

    def load_weights(self, model: nnx.Module, weights: Mapping[str, np.ndarray]) -> None:
        canonical.validate(model.spec, weights)
        model.load_canonical(weights)

    def export_weights(self, model: nnx.Module) -> dict[str, np.ndarray]:
        return model.export_canonical()

    def forward(self, model: nnx.Module, x: np.ndarray, train: bool = False) -> np.ndarray:
        model.spec.check_input(np.shape(x), "NHWC")  # here too: inside jit the error would be wrapped
        return np.asarray(_forward(model, jnp.asarray(x, jnp.float32), train))

    def forward_backward(self, model: nnx.Module, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        model.spec.check_input(np.shape(x), "NHWC")
        y, param_grads, input_grad = _forward_backward(model, jnp.asarray(x, jnp.float32),
                                                       jnp.asarray(cotangent, jnp.float32))
        # the gradients, put in a copy of the model in place of the parameters, go through the
        # model's own conversion to the canonical layout
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        as_model = nnx.merge(graphdef, param_grads, rest)
        grads = {"input": np.asarray(input_grad)}
        grads.update({name: as_model.native_to_canonical(name, np.asarray(as_model.variable(name)[...]))
                      for name in canonical.shapes(model.spec) if not canonical.is_buffer(name)})
        return np.asarray(y), grads

    def device_info(self) -> dict[str, Any]:
        device = jax.devices()[0]
        return {
            "framework": "jax",
            "version": jax.__version__,
            "flax": flax.__version__,
            "device": f"{device.platform}: {device.device_kind}",
            "matmul_precision": jax.config.jax_default_matmul_precision,
            "threads": self.threads,
        }


BACKEND = FrameworkBackend()
