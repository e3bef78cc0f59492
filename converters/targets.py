"""Where parity measures a model: this host, or a device reached by a command (the emulated arm64 root).

onnxruntime's and LiteRT's int8 kernels differ between x86 and ARM (instruction sets, rounding,
accumulation), so a gate measured here proves the model only for x86 devices. A :class:`DeviceTarget`
runs the model where it will run: the host plans the engine calls (:mod:`converters.runner`), writes the
feeds to a file, and the device executes them with its own engines and its own loop (``python -m
device_runtime run-model``, :func:`device_runtime.feeds.run_feeds`); the outputs come back as a file and
are judged by the same role-aware metrics as on the host.

The device side needs nothing but a Python with numpy and the engine: this module stages the host's own
``device_runtime`` and ``signing`` packages beside the model, so the code that runs there is the code
that runs here. How to enter the device (a chroot under QEMU, ssh, ...) is the caller's: a ``run``
callable taking the argv, the host folders to make visible (host path -> device path) and extra
environment.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import device_runtime
import signing
from converters.errors import TargetError, explain
from converters.runner import RunExecutor
from device_runtime.feeds import load_runs, run_model_argv, save_runs

__all__ = ["HOST", "DeviceTarget", "HostTarget", "RunInDevice", "Target", "stage_device_code"]

# The folders the device sees: the model's own folder (ONNX external data stays beside it) and a private
# work folder with the feeds, the outputs and the staged device packages.
DEVICE_MODEL_DIR = "/mnt/edgekit-target/model"
DEVICE_WORK_DIR = "/mnt/edgekit-target/work"

RunInDevice = Callable[[list[str], Mapping[str, str], Mapping[str, str]], "subprocess.CompletedProcess[str]"]


class Target(Protocol):
    """Where a model's outputs are measured."""

    @property
    def name(self) -> str:
        """Short name, as `--target` spells it."""
        ...

    def executor(self, model: str | Path) -> RunExecutor | None:
        """What runs `model`'s planned calls there (None: this process, the host's engines)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The target as the report records it."""
        ...


@dataclass(frozen=True)
class HostTarget:
    """This host: the model runs in this process."""

    name: str = "host"

    def executor(self, model: str | Path) -> RunExecutor | None:
        """None: the runner uses the engine it loaded here."""
        return None

    def describe(self) -> dict[str, Any]:
        """Name, machine and that nothing is emulated."""
        return {"name": self.name, "machine": platform.machine(), "emulated": False}


HOST = HostTarget()


@dataclass(frozen=True)
class DeviceTarget:
    """A device reached by `run`; `python` is the device-side interpreter (numpy and the engines installed).

    ``details`` is recorded in reports (e.g. the emulated CPU). `run` bounds each device process's time and
    raises ``subprocess.TimeoutExpired`` past it.
    """

    name: str
    python: str
    run: RunInDevice
    machine: str
    emulated: bool
    details: Mapping[str, Any] = field(default_factory=dict)

    def executor(self, model: str | Path) -> RunExecutor:
        """Runs the planned calls of `model` in one device process per call list."""
        model = Path(model).resolve()
        if not model.is_file():
            raise TargetError(f"{model}: no such model file to run on {self.name}")

        def execute(
            runs: list[dict[str, np.ndarray]], steps: int, states: dict[str, str]
        ) -> list[dict[str, np.ndarray]]:
            return self._execute(model, runs, steps, states)

        return execute

    def describe(self) -> dict[str, Any]:
        """Name, machine, whether emulated, and the details given."""
        return {"name": self.name, "machine": self.machine, "emulated": self.emulated, **self.details}

    def _execute(
        self, model: Path, runs: list[dict[str, np.ndarray]], steps: int, states: dict[str, str]
    ) -> list[dict[str, np.ndarray]]:
        with tempfile.TemporaryDirectory(prefix="edgekit-target-") as tmp:
            work = Path(tmp)
            stage_device_code(work / "src")
            save_runs(work / "inputs.npz", runs)
            argv = [
                self.python,
                "-m",
                "device_runtime",
                *run_model_argv(
                    f"{DEVICE_MODEL_DIR}/{model.name}",
                    f"{DEVICE_WORK_DIR}/inputs.npz",
                    f"{DEVICE_WORK_DIR}/outputs.npz",
                    steps=steps,
                    states=states,
                ),
            ]
            binds = {str(model.parent): DEVICE_MODEL_DIR, str(work): DEVICE_WORK_DIR}
            env = {"PYTHONPATH": f"{DEVICE_WORK_DIR}/src", "PYTHONDONTWRITEBYTECODE": "1"}
            try:
                done = self.run(argv, binds, env)
            except subprocess.TimeoutExpired as e:
                raise TargetError(
                    f"{model.name} on {self.name}: the device process ran longer than {e.timeout:.0f} s; "
                    "evaluate on fewer samples"
                ) from e
            except OSError as e:
                raise TargetError(f"{model.name} on {self.name}: cannot enter the device ({e})") from e
            if done.returncode != 0:
                reason = explain(RuntimeError((done.stderr or done.stdout or "").strip() or "no output"))
                raise TargetError(
                    f"{model.name} on {self.name}: the device process exited with {done.returncode}: {reason}"
                )
            outputs, _ = load_runs(work / "outputs.npz")
        if len(outputs) != len(runs):
            raise TargetError(f"{model.name} on {self.name}: {len(outputs)} results for {len(runs)} calls")
        return outputs


def stage_device_code(destination: Path) -> None:
    """Copy the host's own device packages (``device_runtime``, ``signing``; source only) to `destination`:
    a device process with ``PYTHONPATH=destination`` runs this host's device code."""
    for package in (device_runtime, signing):
        source = Path(package.__path__[0])
        shutil.copytree(source, destination / source.name, ignore=shutil.ignore_patterns("__pycache__"))
