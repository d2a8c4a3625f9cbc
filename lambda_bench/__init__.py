"""lambda-bench: lambda layers (Bello, ICLR 2021) in PyTorch, TensorFlow and JAX, checked and measured.

Importing this package imports no deep-learning framework; backends load on demand
(lambda_bench.backend.get_backend).
"""

__version__ = "0.1.0"
