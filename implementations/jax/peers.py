"""Other people's JAX lambda layers behind our layer's interface: none. No maintained JAX/Flax lambda layer
exists to compare with (timm and lambda-networks are PyTorch and Keras), so a JAX case is ours only;
this file keeps the three frameworks' file names mirrored.
"""

from __future__ import annotations

from typing import Any

from lambda_bench.measure import steps

# implementation -> the peer's constructor
PEERS: dict[str, Any] = {}


class PeerLayer:
    """Refuses every implementation: JAX has no peer."""

    def __init__(self, implementation: str, spec: Any, seed: int = 0):
        raise steps.Unsupported(f"implementation={implementation!r}: jax has no peer implementation, only ours")
