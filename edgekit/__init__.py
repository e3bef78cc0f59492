"""edgekit: package machine-learning models for edge devices and update them over the air, safely.

Host side of the product: the `edgekit` command line over `converters` (export, int8 quantization,
parity gate), and later bundles, signing and the rollout server. Device code lives in `device_runtime`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
