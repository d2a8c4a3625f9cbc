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

from lambda_bench import specs
from lambda_bench import weights as canonical

from implementations.tensorflow.lambda_layer import LambdaLayer


def model_class(spec: Any) -> type:
    """The layer class that builds ``spec`` (imported on demand: one file per family)."""
    if isinstance(spec, specs.LambdaSpec):
        return LambdaLayer
    if isinstance(spec, specs.AttentionSpec):
        from implementations.tensorflow.attention import attention_class
        return attention_class(spec)
    if isinstance(spec, specs.ResNetSpec):
        from implementations.tensorflow.resnet import ResNet
        return ResNet
    if isinstance(spec, specs.EfficientNetSpec):
        from implementations.tensorflow.efficientnet import EfficientNet
        return EfficientNet
    raise ValueError(f"spec of type {type(spec).__name__}: tensorflow cannot build it")


def _input(model: keras.layers.Layer, x: np.ndarray) -> tf.Tensor:
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

    def build(self, spec: Any, seed: int = 0) -> keras.layers.Layer:
        return model_class(spec)(spec, seed)

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
            loss = tf.reduce_sum(y * tf.convert_to_tensor(cotangent, tf.float32))
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
