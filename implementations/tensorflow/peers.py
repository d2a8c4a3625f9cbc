"""Other people's Keras lambda layers (lambda-networks' tfkeras layer) behind our layer's interface, built
from canonical weights, so that the backend measures them with the same step as ours.

The weight mapping both ways is framework-neutral and lives in lambda_bench/peers.py; this file only
constructs the peer's layer and moves NumPy arrays in and out of it.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from lambda_bench import peers
from lambda_bench.measure import steps
from lambda_bench.weights import init_lambda, lambda_shapes

from implementations.tensorflow._numerics import as_float, assign


def _lambda_networks_keras(spec: Any) -> keras.layers.Layer:
    from lambda_networks.tfkeras import LambdaLayer

    arguments = peers.lucidrains_arguments(spec)
    del arguments["dim"]  # Keras takes the input depth from the first call
    layer = LambdaLayer(**arguments)
    for bn in (layer.norm_q, layer.norm_v):  # the spec's BatchNorm, not Keras' defaults (Keras momentum = 1 - ours)
        bn.epsilon, bn.momentum = spec.bn_eps, 1.0 - spec.bn_momentum
    layer(tf.zeros((1, 2, 2, spec.d_in)), training=False)  # Keras creates the weights on the first call
    return layer


# implementation -> the peer's constructor (its weights: lambda_bench.peers.KERAS_VARIABLES)
PEERS = {
    "lambda_networks_keras": _lambda_networks_keras,
}


class PeerLayer(keras.layers.Layer):
    """A peer's lambda layer for ``spec``, NHWC in and out like ours, its weights set from
    init_lambda(spec, seed): the same starting numbers as our layer for one seed."""

    def __init__(self, implementation: str, spec: Any, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if implementation not in PEERS:
            raise steps.Unsupported(f"implementation={implementation!r}: tensorflow has {', '.join(PEERS)} "
                                    "besides ours")
        reason = peers.missing(implementation) or peers.unsupported(implementation, spec)
        if reason:
            raise steps.Unsupported(reason)
        self.implementation, self.spec = implementation, spec
        self.peer = PEERS[implementation](spec)
        self.built = True
        self.load_canonical(init_lambda(spec, seed))

    def variable(self, name: str):
        """The peer's variable holding canonical tensor ``name`` (in the peer's layout)."""
        return functools.reduce(getattr, peers.KERAS_VARIABLES[name][0], self.peer)

    def load_canonical(self, weights) -> None:
        for name in lambda_shapes(self.spec):
            assign(self.variable(name), peers.KERAS_VARIABLES[name][1](np.asarray(weights[name], np.float32)))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, self.variable(name).numpy()) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of the variable holding ``name``, in the canonical layout."""
        return np.ascontiguousarray(peers.KERAS_VARIABLES[name][2](as_float(a)))

    def call(self, x, training=False):
        self.spec.check_input(x.shape, "NHWC")
        return self.peer(x, training=training)
