"""The output roles a device knows: the ``kind`` of an OUTPUT in the preprocessing spec.

One list, read by the spec's parser (`device_runtime._spec`), the telemetry contract's shadow roles
(`device_runtime._contract_fields.SHADOW_ROLES`) and the command line's `--role` help. It imports nothing,
so `edgekit ... --help` can name the roles without loading the spec parser and the signing stack.
"""

from __future__ import annotations

__all__ = ["OUTPUT_KINDS"]

OUTPUT_KINDS = (
    "classification",
    "detection",
    "segmentation",
    "regression",
    "embedding",
    "sequence",
    "tensor",
)
