"""Other people's PyTorch lambda layers (timm, lambda-networks) behind our layer's interface, built
from canonical weights, so that the backend measures them with the same step as ours.

The weight mapping both ways is framework-neutral and lives in lambda_bench/peers.py; this file only
constructs the peer's module and moves NumPy arrays in and out of it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from lambda_bench import peers
from lambda_bench.measure import steps
from lambda_bench.weights import init_lambda, lambda_shapes


def _timm(spec: Any) -> nn.Module:
    from timm.layers.lambda_layer import LambdaLayer

    return LambdaLayer(**peers.timm_arguments(spec))


def _lambda_networks(spec: Any) -> nn.Module:
    from lambda_networks import LambdaLayer

    with warnings.catch_warnings():  # its relative positions call torch.meshgrid without indexing=
        warnings.simplefilter("ignore", UserWarning)
        return LambdaLayer(**peers.lucidrains_arguments(spec))


# implementation -> (the peer's constructor, canonical -> its state dict, its module -> canonical)
PEERS = {
    "timm": (_timm, peers.to_timm, peers.from_timm),
    "lambda_networks": (_lambda_networks, peers.to_lucidrains, peers.from_lucidrains),
}


class PeerLayer(nn.Module):
    """A peer's lambda layer for ``spec``, NCHW in and out like ours, its weights set from
    init_lambda(spec, seed): the same starting numbers as our layer for one seed."""

    def __init__(self, implementation: str, spec: Any, seed: int = 0):
        super().__init__()
        if implementation not in PEERS:
            raise steps.Unsupported(f"implementation={implementation!r}: torch has {', '.join(PEERS)} besides ours")
        reason = peers.missing(implementation) or peers.unsupported(implementation, spec)
        if reason:
            raise steps.Unsupported(reason)
        self.implementation, self.spec = implementation, spec
        make, self._to_peer, self._from_peer = PEERS[implementation]
        self.peer = make(spec)
        for bn in (self.peer.norm_q, self.peer.norm_v):  # the spec's BatchNorm, not torch's defaults
            bn.eps, bn.momentum = spec.bn_eps, spec.bn_momentum
        self.load_canonical(init_lambda(spec, seed))

    def load_canonical(self, weights) -> None:
        state = self._to_peer(self.spec, {name: np.asarray(weights[name]) for name in lambda_shapes(self.spec)})
        own = self.peer.state_dict()
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(torch.from_numpy(np.ascontiguousarray(value)).to(own[name].dtype))

    def export_canonical(self) -> dict[str, np.ndarray]:
        spec, weights = self._from_peer(self.peer)
        if spec != self.spec:  # the mapping reads the module alone: it must give back the spec it was built for
            raise RuntimeError(f"{self.implementation} maps back to {spec}, not {self.spec}")
        return weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.spec.check_input(x.shape, "NCHW")
        return self.peer(x)
