"""The harness boundary for JAX: NumPy float32 NHWC and canonical weights in, the flax.nnx layer inside.

The layer converts its own weights to and from the canonical layout (load_canonical / export_canonical);
gradients go through the same conversion here.

``build(spec, seed, dtype="float64")`` makes a float64 model (the float64 stage of
lambda_bench.equivalence): built as usual, then every variable widened. JAX computes in float64 only
under jax_enable_x64, so every call here on a float64 model runs inside ``jax.enable_x64(True)``, a
scoped setting: the rest of the process keeps JAX's float32 defaults.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend.core import ClosedJaxpr, Literal

from implementations.jax._numerics import at_least_fp32, build_in
from lambda_bench import families
from lambda_bench import weights as canonical
from lambda_bench.measure import steps

try:
    import optax  # a flax dependency: the loss of the measured train step
except ImportError:  # pragma: no cover
    optax = None


def model_class(spec: Any) -> type:
    """The module class that builds ``spec``: its family's implementation file in this package
    (lambda_bench.families), imported on demand."""
    return families.implementation_class(spec, __package__)


def _is_float64(model: nnx.Module) -> bool:
    return any(np.dtype(v.dtype) == np.float64 for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Param))


def _dtype(model: nnx.Module) -> np.dtype:
    """The dtype inputs are given to ``model`` in: float64 for a float64 model, else float32."""
    return np.dtype(np.float64 if _is_float64(model) else np.float32)


def _precision(model: nnx.Module) -> Any:
    """jax.enable_x64(True) for a float64 model (its arrays, and the computations on them, stay
    float64 only there), else nothing."""
    return jax.enable_x64(True) if _is_float64(model) else contextlib.nullcontext()


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


# --- measured steps (lambda_bench.measure.steps) --------------------------------------------------

_PLATFORMS = {"cpu": "cpu", "cuda": "gpu", "tpu": "tpu"}
# calls whose body is an ordinary closed jaxpr, inlined by the bf16 interpreter (inside the step's
# jit an inner jit boundary changes nothing); any other higher-order primitive (custom_jvp_call for
# relu/silu/softmax, custom_vjp_call, control flow) is bound as it is, so its body keeps float32
_INLINED_CALLS = ("jit", "pjit", "closed_call", "core_call")


def _step_device(device: str) -> Any:
    """The first jax device of the platform ``device`` names; steps.Unsupported where there is none."""
    platform = _PLATFORMS[device]
    try:
        devices = jax.devices(platform)
    except Exception as error:  # RuntimeError "Unknown backend" / "failed to initialize", by version
        raise steps.Unsupported(f"device={device!r}: jax has no {platform} backend here ({error})") from None
    if not devices:
        raise steps.Unsupported(f"device={device!r}: jax found no {platform} devices")
    return devices[0]


def _eval_bf16(jaxpr: Any, consts: list, args: list) -> list:
    """Evaluate ``jaxpr`` (jax.core.eval_jaxpr's loop) with every convolution and matmul
    (conv_general_dilated, dot_general) in bfloat16: operands cast to bfloat16, a bfloat16 result
    cast back to the traced dtype (float32); every other operation exactly as traced. It only binds
    primitives, so it differentiates: the backward convolutions and matmuls (the transposes of
    these) run in bfloat16 too, on the cotangent cast to bfloat16."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        if prim.name in _INLINED_CALLS and isinstance(eqn.params.get("jaxpr"), ClosedJaxpr):
            inner = eqn.params["jaxpr"]
            ans = _eval_bf16(inner.jaxpr, inner.consts, invals)
        else:
            params = eqn.params
            autocast = prim in (jax.lax.dot_general_p, jax.lax.conv_general_dilated_p) and all(
                jnp.issubdtype(v.dtype, jnp.floating) for v in invals)
            if autocast:
                invals = [v.astype(jnp.bfloat16) for v in invals]
                params = dict(params, preferred_element_type=jnp.bfloat16)
            with eqn.ctx.manager:
                ans = prim.bind(*invals, **prim.get_bind_params(params))
            if autocast:  # back to the traced dtype, so every other op sees what it was traced with
                ans = ans.astype(eqn.outvars[0].aval.dtype)
        if not prim.multiple_results:
            ans = [ans]
        for var, val in zip(eqn.outvars, ans):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


def _bf16_autocast(fn: Callable) -> Callable:
    """``fn`` (arrays in, arrays out; float32) with its convolutions and matmuls in bfloat16: traced
    to a jaxpr in float32, then run by _eval_bf16. Used inside the jitted step (traced once)."""
    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        out = _eval_bf16(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)
    return wrapped


class JaxStep:
    """One measured step of a case (the object lambda_bench.measure.steps describes), made by
    FrameworkBackend.prepare().

    The model is split once (nnx.split: graphdef, nnx.Param state, the rest: BatchStat running
    statistics and constants); the step is ``jax.jit`` of a pure function of (params, rest,
    momentum, x, labels) that nnx.merge-s the model inside the trace and returns the new state. The
    state buffers are donated to the train step (the infer step reuses them: nothing is donated).

    precision "bf16": the parameters stay float32 (the master copy, updated in float32). The models
    cast their input to float32 on entry and lax.conv requires equal operand dtypes, so casting the
    parameters and x to bfloat16 up front cannot run (ResNet / EfficientNet raise a TypeError).
    Instead the forward is traced in float32 and re-run by an interpreter (_eval_bf16) that runs
    every convolution and matmul (lax.conv_general_dilated, lax.dot_general: the projections, the
    lambda / attention contractions, the classifier) on bfloat16 operands (the parameters and
    activations, x where it enters the first conv or projection) to a bfloat16 result, cast back to
    float32; their transposes in the backward run in bfloat16 likewise. Everything else runs in
    float32 - BatchNorm (batch and running statistics), softmax in the lambda / attention layers,
    activations, pooling, residual adds, the loss - as torch.autocast does it. A matmul inside a
    custom_jvp function (none in these models) would stay float32.
    """

    def __init__(self, model: nnx.Module, case: Any, *, mode: str, precision: str, compile: str, device: Any,
                 seed: int):
        if isinstance(device, str):  # "cpu" / "cuda" as the harness names them, or a jax Device
            device = _step_device(device)
        self.case, self.mode, self.precision, self.compile, self.device = case, mode, precision, compile, device
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self._graphdef = graphdef
        x, labels = steps.synthetic_batch(case, seed)
        self._traces = 0

        def apply_fp32(params, rest, x, train):
            # copy: fresh Variables at this trace level (the running statistics are updated under
            # value_and_grad's trace, not the jit's one the state's Variables were made in)
            model = nnx.merge(graphdef, params, rest, copy=True)
            y = model(x, train=train)
            return y, nnx.split(model, nnx.Param, ...)[2]

        def apply(params, rest, x, train):
            if precision == "bf16":
                y, new_rest = _bf16_autocast(functools.partial(apply_fp32, train=train))(params, rest, x)
            else:
                y, new_rest = apply_fp32(params, rest, x, train)
            # float32 out (bf16 inside), float64 kept in a float64 model (the float64 training stage of
            # lambda_bench.equivalence)
            return at_least_fp32(y), new_rest

        def infer(params, rest, x):
            return apply(params, rest, x, False)[0]

        def loss_fn(params, rest, x, labels):
            y, new_rest = apply(params, rest, x, True)
            if labels is None:  # a layer: half the mean square of its output
                return 0.5 * jnp.mean(jnp.square(y)), new_rest
            if optax is not None:
                ce = optax.softmax_cross_entropy_with_integer_labels(y, labels)
            else:
                ce = -jnp.take_along_axis(jax.nn.log_softmax(y, axis=-1), labels[:, None], axis=-1)[:, 0]
            return jnp.mean(ce), new_rest

        def train(params, rest, momentum, x, labels):
            if labels is None:  # a layer: the backward computes its input's gradient too (steps)
                (loss, new_rest), (grads, d_x) = jax.value_and_grad(loss_fn, argnums=(0, 2), has_aux=True)(
                    params, rest, x, labels)
            else:
                (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, labels)
                d_x = None
            grads = clip_gradients(grads)
            momentum = jax.tree.map(lambda m, g: steps.MOMENTUM * m + g, momentum, grads)
            params = jax.tree.map(lambda p, m: p - steps.LEARNING_RATE * m, params, momentum)
            # the input's gradient is an output of the step: jit would prune an unused one
            return params, new_rest, momentum, loss, d_x

        def counted(fn):
            def traced(*args):
                self._traces += 1  # Python: runs only while jax traces (a compilation follows)
                return fn(*args)
            return traced

        # a float64 model keeps float64 arrays (and computes in float64) only under jax.enable_x64
        self._x64 = _is_float64(model)
        put = functools.partial(jax.device_put, device=self.device)
        with self._numerics():
            self._params, self._rest = put(params), put(rest)
            self._x = put(jnp.asarray(x))
            self._labels = None if labels is None else put(jnp.asarray(labels))
            self._momentum = put(jax.tree.map(jnp.zeros_like, params)) if mode == "train" else None
        self._forward = jax.jit(infer)  # uncounted, for _output()
        self._out = None
        self._loss = None
        self._d_x = None
        if mode == "train":
            self._step = jax.jit(counted(train), donate_argnums=(0, 1, 2))
        else:
            self._step = jax.jit(counted(infer))
        self._infer_fp32 = jax.jit(lambda params, rest, x: apply_fp32(params, rest, x, False)[0])

    # --- the contract (lambda_bench.measure.steps.Step) ---------------------------------------------

    @property
    def traces(self) -> int:
        return self._traces

    def step(self) -> None:
        with self._numerics():
            if self.mode == "train":
                self._params, self._rest, self._momentum, self._loss, self._d_x = self._step(
                    self._params, self._rest, self._momentum, self._x, self._labels)
                jax.block_until_ready((self._params, self._rest, self._momentum, self._loss, self._d_x))
            else:
                self._out = jax.block_until_ready(self._step(self._params, self._rest, self._x))

    def loss(self) -> float:
        if self.mode != "train" or self._loss is None:
            return math.nan
        return float(self._loss)

    def reset_peak_memory(self) -> None:
        """A no-op: jax's allocator peak (memory_stats peak_bytes_in_use) cannot be reset."""

    def peak_memory(self) -> tuple[int | None, str]:
        if self.device.platform == "cpu":
            return None, ""
        stats = self.device.memory_stats() or {}
        if "peak_bytes_in_use" not in stats:
            return None, ""
        return int(stats["peak_bytes_in_use"]), "jax memory_stats peak_bytes_in_use (since process start: cannot be reset)"

    def count_flops(self) -> dict[str, Any]:
        """XLA's cost analysis of the compiled float32 inference forward of the batch."""
        note = ("counts elementwise ops too (1 flop each) besides 2 per multiply-add; a convolution "
                "only over the kernel taps inside the input (its zero padding not counted)")
        try:
            analysis = self._infer_fp32.lower(self._params, self._rest, self._x).compile().cost_analysis()
        except Exception as error:  # a backend without cost analysis
            return {"flops": None, "counter": "XLA cost analysis", "note": f"unavailable: {error}"}
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else {}
        flops = (analysis or {}).get("flops")
        return {"flops": None if flops is None else int(flops), "counter": "XLA cost analysis", "note": note}

    def _output(self) -> np.ndarray:
        """The latest infer step's output, float32 NumPy NHWC (for tests); in train mode, whose step
        keeps no output, or before a step: the inference forward (at the step's precision) of the
        current state."""
        with self._numerics():
            out = self._out if self._out is not None else self._forward(self._params, self._rest, self._x)
        return np.asarray(out)

    def _input_gradient(self) -> np.ndarray | None:
        """The latest train step's gradient of the input, NHWC (a layer's; None for a model, for tests)."""
        return None if self._d_x is None else np.asarray(self._d_x)

    def _weights(self) -> dict[str, np.ndarray]:
        model = nnx.merge(self._graphdef, self._params, self._rest)
        with _precision(model):
            return model.export_canonical()

    def _numerics(self) -> Any:
        """jax.enable_x64(True) for a float64 model (see _precision), else nothing."""
        return jax.enable_x64(True) if self._x64 else contextlib.nullcontext()


def clip_gradients(grads: Any) -> Any:
    """Every gradient (a pytree) times GRADIENT_CLIP_NORM / max(global L2 norm, GRADIENT_CLIP_NORM)."""
    leaves = jax.tree.leaves(grads)
    if not leaves:
        return grads
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))
    scale = steps.GRADIENT_CLIP_NORM / jnp.maximum(norm, steps.GRADIENT_CLIP_NORM)
    return jax.tree.map(lambda g: g * scale, grads)


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

    def build(self, spec: Any, seed: int = 0, dtype: str = "float32") -> nnx.Module:
        """dtype "float64": every parameter and running statistic float64, and so every computation
        (the layers cast their input to their parameters' dtype)."""
        return build_in(lambda: model_class(spec)(spec, seed), dtype)

    def prepare(self, case: Any, *, mode: str = "infer", precision: str = "fp32", compile: str = "compiled",
                device: str = "cpu", seed: int = 0, implementation: str = "ours") -> JaxStep:
        """A measured step of ``case`` (lambda_bench.measure.steps): built, split, put on the device;
        ``implementation`` a peer's layer (implementations/jax/peers.py: there is none) instead of ours."""
        steps.check_options(self.name, mode, precision, compile, device)
        where = _step_device(device)
        if implementation == "ours":
            model = self.build(case.spec, seed)
        else:
            from implementations.jax.peers import PeerLayer
            model = PeerLayer(implementation, case.spec, seed)
        return JaxStep(model, case, mode=mode, precision=precision, compile=compile, device=where, seed=seed)

    def load_weights(self, model: nnx.Module, weights: Mapping[str, np.ndarray]) -> None:
        canonical.validate(model.spec, weights)
        with _precision(model):
            model.load_canonical(weights)

    def export_weights(self, model: nnx.Module) -> dict[str, np.ndarray]:
        with _precision(model):
            return model.export_canonical()

    def forward(self, model: nnx.Module, x: np.ndarray, train: bool = False) -> np.ndarray:
        model.spec.check_input(np.shape(x), "NHWC")  # here too: inside jit the error would be wrapped
        with _precision(model):
            dtype = _dtype(model)
            return np.asarray(_forward(model, jnp.asarray(np.asarray(x, dtype)), train))

    def forward_backward(self, model: nnx.Module, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with _precision(model):
            return self._forward_backward(model, x, cotangent)

    def _forward_backward(self, model: nnx.Module, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        model.spec.check_input(np.shape(x), "NHWC")
        dtype = _dtype(model)
        y, param_grads, input_grad = _forward_backward(model, jnp.asarray(np.asarray(x, dtype)),
                                                       jnp.asarray(np.asarray(cotangent, dtype)))
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
