"""The harness boundary for TensorFlow: NumPy float32 NHWC and canonical weights in and out.

The layer converts its own weights to and from the canonical layout (load_canonical / export_canonical);
gradients go through the same conversion here. ``prepare()`` returns a TensorFlowStep, the measured
step of lambda_bench.measure.steps.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from lambda_bench import families
from lambda_bench import weights as canonical
from lambda_bench.measure import steps

from implementations.tensorflow._numerics import at_least_fp32, build_in


def model_class(spec: Any) -> type:
    """The module class that builds ``spec``: its family's implementation file in this package
    (lambda_bench.families), imported on demand."""
    return families.implementation_class(spec, __package__)


def _input(model: keras.layers.Layer, x: np.ndarray) -> tf.Tensor:
    """Checked here as well as in the layer: Keras wraps errors raised in call() in its own text.
    In the model's dtype (float32, or float64 for a float64 build)."""
    model.spec.check_input(np.shape(x), "NHWC")
    return tf.convert_to_tensor(np.asarray(x, dtype=model.compute_dtype))


_FLOP_COUNTER = "XLA cost analysis (TF HLO)"


def _xla_cost_flops(hlo_text: str) -> int | None:
    """FLOPs of an HLO module by XLA's cost analysis, through jaxlib (None where it is not installed)."""
    try:
        import jax
        from jax._src.lib import xla_client as xc
    except ImportError:
        return None
    module = xc.hlo.hlo_module_from_text(hlo_text)
    return int(xc._xla.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)["flops"])


class TensorFlowStep:
    """One measured step of a TensorFlow model (the object described in lambda_bench.measure.steps).

    Built by FrameworkBackend.prepare(): the model, the synthetic batch, the momentum buffers and the
    step function all live on one device (``/CPU:0`` or ``/GPU:0``) and are created before any call.

    - infer: ``model(x, training=False)``; the step ends by reading the sum of the output to the host.
    - train: forward in training mode under a GradientTape (BatchNorm updates its running statistics),
      the loss (models: mean sparse softmax cross-entropy of the logits; layers: 0.5 * mean(y**2)),
      gradients of every parameter, then SGD with momentum as torch.optim.SGD
      (``buf = momentum * buf + grad; p -= lr * buf``) by assign ops on buffers made here; the step
      ends by reading the loss, which waits (control dependencies) for every update.
    - compile: "eager" calls the Python step, "compiled" a tf.function, "xla" a
      tf.function(jit_compile=True).
    - precision: float32 only (prepare() raises steps.Unsupported for bf16: see there).
    """

    def __init__(self, model: keras.layers.Layer, case: Any, *, mode: str, precision: str, compile: str,
                 device: str, seed: int):
        self.model, self.case = model, case
        self.mode, self.precision, self.compile = mode, precision, compile
        # "/CPU:0" or "/GPU:0"; the harness's "cpu" / "cuda" are accepted too
        self.device = {"cpu": "/CPU:0", "cuda": "/GPU:0"}.get(device, device)
        device = self.device
        self._gpu = device.startswith("/GPU")
        self._loss_value: tf.Tensor | None = None
        self._output_value: tf.Tensor | None = None
        self._input_grad_value: tf.Tensor | None = None
        self._flops: dict[str, Any] | None = None
        x, labels = steps.synthetic_batch(case, seed)
        model.spec.check_input(x.shape, "NHWC")
        with tf.device(device):
            # tf.identity places the tensor on the device (tf.constant alone stays on the host); in the
            # model's dtype (float64 for the float64 training stage of lambda_bench.equivalence)
            self._x = tf.identity(tf.constant(x, model.compute_dtype))
            self._labels = None if labels is None else tf.identity(tf.constant(labels, tf.int32))
            self._params = [model.variable(name) for name in canonical.shapes(model.spec)
                            if not canonical.is_buffer(name)]
            self._momentum = ([tf.Variable(tf.zeros(p.shape, p.dtype), trainable=False,
                                           name=f"momentum_{i}") for i, p in enumerate(self._params)]
                              if mode == "train" else [])
        python_step = self._train if mode == "train" else self._infer
        if compile == "eager":
            self._fn, self._traced = python_step, None
        else:
            self._fn = tf.function(python_step, jit_compile=(compile == "xla"), autograph=False)
            self._traced = self._fn

    # --- the contract (lambda_bench.measure.steps.Step) ---------------------------------------------

    @property
    def traces(self) -> int:
        return 0 if self._traced is None else int(self._traced.experimental_get_tracing_count())

    def step(self) -> None:
        with tf.device(self.device):
            y, scalar, *d_x = self._fn()  # train: and the input's gradient (None for a model)
        scalar.numpy()  # synchronise: the host waits for the step's result
        self._output_value = y
        self._input_grad_value = d_x[0] if d_x else None
        if self.mode == "train":
            self._loss_value = scalar

    def loss(self) -> float:
        if self.mode != "train" or self._loss_value is None:
            return float("nan")
        return float(self._loss_value.numpy())

    def reset_peak_memory(self) -> None:
        if self._gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")

    def peak_memory(self) -> tuple[int | None, str]:
        if self._gpu:
            return (int(tf.config.experimental.get_memory_info("GPU:0")["peak"]),
                    "tf.config.experimental.get_memory_info peak")
        return None, ""

    def count_flops(self) -> dict[str, Any]:
        """XLA's cost analysis of the HLO of the inference forward (read by jaxlib; computed once)."""
        if self._flops is None:
            def infer(x):
                return self.model(x, training=False)

            forward = tf.function(infer, jit_compile=True, autograph=False)
            with tf.device(self.device):
                hlo = forward.experimental_get_compiler_ir(self._x)(stage="hlo")
            flops = _xla_cost_flops(hlo)
            note = ("counts elementwise ops too (1 flop each) besides 2 per multiply-add; a convolution only "
                    "over the kernel taps inside the input (its zero padding not counted)" if flops is not None
                    else "needs jaxlib to analyse the HLO; not installed")
            self._flops = {"flops": flops, "counter": _FLOP_COUNTER, "note": note}
        return dict(self._flops)

    def _output(self) -> np.ndarray:
        """The latest step's forward output as NumPy, NHWC (for tests)."""
        if self._output_value is None:
            raise RuntimeError("no step has run yet")
        return self._output_value.numpy()

    def _input_gradient(self) -> np.ndarray | None:
        """The latest train step's gradient of the input, NHWC (a layer's; None for a model, for tests)."""
        return None if self._input_grad_value is None else self._input_grad_value.numpy()

    def _weights(self) -> dict[str, np.ndarray]:
        return self.model.export_canonical()

    # --- helpers -----------------------------------------------------------------------------------

    def _infer(self):
        y = self.model(self._x, training=False)
        return y, tf.reduce_sum(y)

    def _loss_of(self, y):
        y = at_least_fp32(y)  # as torch's step: the loss in float32 at least
        if self._labels is not None:
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(self._labels, y))
        return 0.5 * tf.reduce_mean(tf.square(y))

    def _train(self):
        layer = self._labels is None  # a layer: the backward computes its input's gradient too (steps)
        with tf.GradientTape() as tape:
            if layer:
                tape.watch(self._x)
            y = self.model(self._x, training=True)  # updates the running statistics
            loss = self._loss_of(y)
        # a gather's gradient is IndexedSlices
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, [*self._params, *([self._x] if layer else [])])]
        d_x = grads.pop() if layer else None
        grads = clip_gradients(grads)
        updates = []
        for param, buf, grad in zip(self._params, self._momentum, grads):
            new_buf = buf.assign(steps.MOMENTUM * buf + grad)
            updates.append(param.assign_sub(steps.LEARNING_RATE * new_buf))
        with tf.control_dependencies(updates):
            done = tf.identity(loss)
        # the input's gradient is an output of the step: a graph or XLA would prune an unused one
        return y, done, d_x


def clip_gradients(grads: list) -> list:
    """Every gradient times GRADIENT_CLIP_NORM / max(global L2 norm, GRADIENT_CLIP_NORM)."""
    if not grads:
        return grads
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
    scale = steps.GRADIENT_CLIP_NORM / tf.maximum(norm, steps.GRADIENT_CLIP_NORM)
    return [g * scale for g in grads]


class FrameworkBackend:
    name = "tensorflow"

    def configure(self, threads: int | None = None) -> None:
        tf.config.experimental.enable_tensor_float_32_execution(False)
        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError as exc:  # only possible before TensorFlow starts its runtime
                warnings.warn(f"tensorflow threads={threads} not applied: {exc}", stacklevel=2)

    def build(self, spec: Any, seed: int = 0, dtype: str = "float32") -> keras.layers.Layer:
        """dtype "float64": every variable and every computation in float64 (the float64 stage of
        lambda_bench.equivalence), the layers built under that Keras dtype policy."""
        return build_in(lambda: model_class(spec)(spec, seed), dtype)

    def prepare(self, case: Any, *, mode: str = "infer", precision: str = "fp32", compile: str = "compiled",
                device: str = "cpu", seed: int = 0, implementation: str = "ours") -> TensorFlowStep:
        """The measured step of ``case`` (lambda_bench.measure.steps); steps.Unsupported where this
        machine lacks the device; ``implementation`` a peer's layer (implementations/tensorflow/peers.py)
        instead of ours."""
        steps.check_options(self.name, mode, precision, compile, device)
        if device == "cuda":
            if not tf.config.list_physical_devices("GPU"):
                raise steps.Unsupported("device='cuda': tensorflow sees no GPU "
                                        "(tf.config.list_physical_devices('GPU') is empty)")
            where = "/GPU:0"
        elif device == "tpu":
            if not tf.config.list_physical_devices("TPU"):
                raise steps.Unsupported("device='tpu': tensorflow sees no TPU "
                                        "(tf.config.list_physical_devices('TPU') is empty)")
            raise steps.Unsupported("device='tpu': this backend does not set up a TPUStrategy")
        else:
            where = "/CPU:0"
        if precision == "bf16":
            raise steps.Unsupported(
                "precision='bf16': not implemented for tensorflow: Keras's mixed_bfloat16 policy does cast"
                " these layers' inputs and variable reads, but then the BatchNorm statistics and the"
                " lambda/attention softmaxes compute in bfloat16 too (autocast keeps them in float32), and"
                " the lambda convolution's backward (tf.signal.rfft2d) takes float32 only")
        with tf.device(where):
            if implementation == "ours":
                model = self.build(case.spec, seed)
            else:
                from implementations.tensorflow.peers import PeerLayer
                model = PeerLayer(implementation, case.spec, seed)
            return TensorFlowStep(model, case, mode=mode, precision=precision, compile=compile, device=where,
                                  seed=seed)

    def load_weights(self, model: keras.layers.Layer, weights: Mapping[str, np.ndarray]) -> None:
        canonical.validate(model.spec, weights)
        model.load_canonical(weights)

    def export_weights(self, model: keras.layers.Layer) -> dict[str, np.ndarray]:
        return model.export_canonical()

    def forward(self, model: keras.layers.Layer, x: np.ndarray, train: bool = False) -> np.ndarray:
        return model(_input(model, x), training=train).numpy()

    def forward_backward(
        self, model: keras.layers.Layer, x: np.ndarray, cotangent: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = _input(model, x)
        params = {name: model.variable(name) for name in canonical.shapes(model.spec)
                  if not canonical.is_buffer(name)}
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)  # updates the running statistics
            loss = tf.reduce_sum(y * tf.convert_to_tensor(np.asarray(cotangent, dtype=y.dtype.as_numpy_dtype)))
        d_x, *d_params = tape.gradient(loss, [x, *params.values()])
        grads = {"input": d_x.numpy()}
        for name, grad in zip(params, d_params):
            grads[name] = model.native_to_canonical(name, tf.convert_to_tensor(grad).numpy())  # gather: IndexedSlices
        return y.numpy(), grads

    def device_info(self) -> dict[str, Any]:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            device = f"GPU:0 ({details.get('device_name', 'unknown')})"
        else:
            device = "CPU"
        return {"framework": self.name, "version": tf.__version__, "keras": keras.__version__,
                "device": device}


BACKEND = FrameworkBackend()
