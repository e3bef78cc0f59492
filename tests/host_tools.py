"""Which tests need the host toolchain, for the device-only test environment.

`scripts/device_suite.sh` runs tests/device_runtime and tests/attacks against the installed edgekit-device
wheel with the device's dependencies only (device/requirements/), and sets EDGEKIT_DEVICE_SUITE=1. There,
a test that needs a host-only package skips and names it. Anywhere else the host packages are required: a
missing one fails the test instead of hiding it behind a skip.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def in_device_suite() -> bool:
    """True when running in the device-only environment of scripts/device_suite.sh."""
    return os.environ.get("EDGEKIT_DEVICE_SUITE") == "1"


def needs_host(*modules: str, why: str) -> pytest.MarkDecorator:
    """Skip in the device-only environment when any of `modules` is absent; `why` says what needs them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        in_device_suite() and bool(missing),
        reason=f"host toolchain: {why} needs {', '.join(missing)}, absent from the device-only environment",
    )
