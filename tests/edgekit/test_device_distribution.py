"""The device distribution (device/pyproject.toml, `edgekit-device`): what its wheel holds, and that its
dependency ranges, the host's pins and the lock files the device suite installs (device/requirements/) agree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "device"
LOCKS = {"3.10": DEVICE / "requirements" / "py310.txt", "3.11": DEVICE / "requirements" / "py311.txt"}


def _project(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())["project"]


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _device_requirements() -> list[Requirement]:
    project = _project(DEVICE / "pyproject.toml")
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + [r for group in extras.values() for r in group]]


@pytest.mark.slow
def test_the_device_wheel_holds_only_device_runtime_and_signing(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for name in ("device", "device_runtime", "signing"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "build"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "dist"), str(tree / "device")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("edgekit_device-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"device_runtime", "signing"}
    packages = ("device_runtime", "signing")
    sources = {str(p.relative_to(ROOT)) for d in packages for p in (ROOT / d).glob("*.py")}
    assert {n for n in names if ".dist-info/" not in n} == sources  # every module, nothing else
    assert metadata["Name"] == "edgekit-device" and metadata["Requires-Python"] == ">=3.10"
    assert set(metadata.get_all("Provides-Extra")) == {"onnx", "tflite", "image"}


def test_the_device_base_dependencies_are_the_host_distributions() -> None:
    # The host distribution ships the same two packages: both must ask for the same base libraries.
    device, host = _project(DEVICE / "pyproject.toml"), _project(ROOT / "pyproject.toml")
    assert device["dependencies"] == host["dependencies"]


def test_the_device_engine_ranges_admit_the_host_pins() -> None:
    host = _project(ROOT / "pyproject.toml")["optional-dependencies"]
    device = {_canonical(r.name): r for r in _device_requirements()}
    for extra in ("onnx", "tflite"):
        for pin in map(Requirement, host[extra]):
            (version,) = [s.version for s in pin.specifier]
            ranged = device[_canonical(pin.name)]
            assert ranged.specifier.contains(version), f"the host pins {pin}; edgekit-device asks {ranged}"


@pytest.mark.parametrize("python", sorted(LOCKS))
def test_each_lock_file_satisfies_the_device_distribution_and_lock_in(python: str) -> None:
    pins = _pins(LOCKS[python])
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    inputs = [
        Requirement(line)
        for line in (DEVICE / "requirements" / "lock.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for requirement in _device_requirements() + inputs:
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = _canonical(requirement.name)
        assert name in pins, f"{LOCKS[python].name} pins no {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
