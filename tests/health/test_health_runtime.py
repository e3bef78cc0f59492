"""The runtime's health sketches with bundles that predate reference profiles, and with health off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from device_runtime.telemetry_contract import parse_payload
from tests.device_runtime.runtime_fixtures import build_releases, config, sample


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_releases(tmp_path_factory.mktemp("releases"))  # no golden data: no health.json


def _health_events(rt: Any) -> list[dict[str, Any]]:
    return [e.payload for e in rt.telemetry.pending(10_000) if e.kind == "health"]


def test_a_bundle_without_a_profile_installs_and_reports_sketches_without_bins(
    releases: Any, tmp_path: Path
) -> None:
    from device_runtime.runtime import Runtime

    assert "health.json" not in releases.bundles["1.0.0"].read_bytes().decode("latin-1")
    rt = Runtime(config(tmp_path / "store", releases))
    try:
        rt.install(releases.bundles["1.0.0"])
        for seed in range(5):
            rt.predict(sample(seed=seed))
        rt.flush_health()
        (payload,) = _health_events(rt)
        parsed = parse_payload("health", payload)
        assert parsed.inferences == 5 and parsed.bundle_id == releases.bundle_ids["1.0.0"]
        assert parsed.inputs[0].bins == () and parsed.inputs[0].n == (40,)  # 5 requests of 8 values
        assert sum(parsed.outputs[0].counts) == 5
        assert rt.status()["health"] == {"enabled": True, "failures": 0}
    finally:
        rt.close()


def test_health_off_reports_nothing(releases: Any, tmp_path: Path) -> None:
    from device_runtime.runtime import Runtime

    rt = Runtime(config(tmp_path / "store", releases, health=False))
    try:
        rt.install(releases.bundles["1.0.0"])
        rt.predict(sample())
        rt.flush_health()
        assert _health_events(rt) == []
    finally:
        rt.close()


def test_a_window_is_reported_after_health_every_inferences(releases: Any, tmp_path: Path) -> None:
    from device_runtime.runtime import Runtime

    rt = Runtime(config(tmp_path / "store", releases, health_every=3))
    try:
        rt.install(releases.bundles["1.0.0"])
        for seed in range(7):
            rt.predict(sample(seed=seed))
        assert [p["inferences"] for p in _health_events(rt)] == [3, 3]
    finally:
        rt.close()
