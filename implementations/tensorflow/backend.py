"""The harness boundary for TensorFlow: NumPy float32 NHWC and canonical weights in and out.

The layer converts its own weights to and from the canonical layout (load_canonical / export_canonical);
gradients go through the same conversion here.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from lambda_bench import weights as canonical
from lambda_bench.specs import LambdaSpec

from implementations.tensorflow.lambda_layer import LambdaLayer


def _input(model: LambdaLayer, x: np.ndarray) -> tf.Tensor:
    """Checked here as well as in the layer: Keras wraps errors raised in call() in its own text."""
    model.spec.check_input(np.shape(x), "NHWC")
    return tf.convert_to_tensor(x, tf.float32)


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

    def build(self, spec: LambdaSpec, seed: int = 0) -> LambdaLayer:
        return LambdaLayer(spec, seed)

    def load_weights(self, model: LambdaLayer, weights: Mapping[str, np.ndarray]) -> None:
        canonical.validate(model.spec, weights)
        model.load_canonical(weights)

    def export_weights(self, model: LambdaLayer) -> dict[str, np.ndarray]:
        return model.export_canonical()

    def forward(self, model: LambdaLayer, x: np.ndarray, train: bool = False) -> np.ndarray:
        return model(_input(model, x), training=train).numpy()

    def forward_backward(
        self, model: LambdaLayer, x: np.ndarray, cotangent: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = _input(model, x)
        params = {name: model.variable(name) for name in canonical.lambda_shapes(model.spec)
                  if not canonical.is_buffer(name)}
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)  # updates the running statistics
            loss = tf.reduce_sum(y * tf.convert_to_tensor(cotangent, tf.float32))
        d_x, *d_params = tape.gradient(loss, [x, *params.values()])
        grads = {"input": d_x.numpy()}
        for name, grad in zip(params, d_params):
            grads[name] = canonical.from_in_out_layout(name, tf.convert_to_tensor(grad).numpy())  # gather: IndexedSlices
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
