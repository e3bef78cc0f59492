"""The telemetry contract bounds every field of a ``health`` sketch; ingest quarantines what it refuses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from device_runtime.errors import ContractError
from device_runtime.telemetry_contract import parse_payload
from tests.adversarial._telemetry import (
    batch,
    bundle,
    database_url,
    event,
    fresh_server,
    post,
    quarantined,
    register,
    stored,
)
from tests.server.conftest import LiveServer

BUNDLE = "cd" * 32


def good(bundle_id: str = BUNDLE) -> dict[str, Any]:
    """A sketch a real device could send: 10 inferences of a 3-channel input with reference bins."""
    return {
        "bundle_id": bundle_id,
        "version": "1.1.0",
        "inferences": 10,
        "window_s": 60.0,
        "inputs": [
            {
                "name": "image",
                "n": [100, 100, 100],
                "mean": [0.5, 0.4, 0.3],
                "m2": [8.0, 7.5, 6.0],
                "bins": [[10] * 10, [10] * 10, [50, 50] + [0] * 8],
            }
        ],
        "outputs": [
            {"name": "top-1", "role": "classification", "classes": [3, 0, 7], "confidence": [0] * 9 + [10]},
            {
                "name": "boxes",
                "role": "detection",
                "detections": [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],
                "scores": [0] * 5 + [5] + [0] * 4,
                "score_sum": 2.7,
            },
        ],
    }


def _set(path: str, value: Any) -> Any:
    def mutate(p: dict[str, Any]) -> None:
        target: Any = p
        *head, last = path.split(".")
        for key in head:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value

    return mutate


MUTATIONS = [
    pytest.param(_set("inputs.0.n", [100] * 17), "histogram-length", id="too-many-channels"),
    pytest.param(_set("inputs.0.n", [41_000, 100, 100]), "out-of-range", id="more-elements-than-sampled"),
    pytest.param(_set("inputs.0.bins.0", [10] * 9 + [11]), "histogram-sum", id="bins-not-summing-to-n"),
    pytest.param(_set("inputs.0.bins.0", [5] * 20), "histogram-length", id="too-many-bins"),
    pytest.param(_set("inputs.0.mean.0", float("nan")), "not-finite", id="nan-mean"),
    pytest.param(_set("inputs.0.m2.1", -1.0), "out-of-range", id="negative-m2"),
    pytest.param(_set("inputs.0.values", [0.1] * 64), "unknown-field", id="raw-values-smuggled"),
    pytest.param(_set("inputs", [good()["inputs"][0]] * 2), "sketch-inconsistent", id="duplicate-input"),
    pytest.param(
        _set("inputs", [{**good()["inputs"][0], "name": f"i{k}"} for k in range(9)]),
        "too-long",
        id="9-inputs",
    ),
    pytest.param(_set("outputs.0.classes", [0] * 1024 + [10]), "histogram-length", id="1025-classes"),
    pytest.param(_set("outputs.0.classes", [3, -1, 8]), "out-of-range", id="negative-class-count"),
    pytest.param(_set("outputs.0.confidence", [1] * 10 + [0]), "histogram-length", id="11-confidence-bins"),
    pytest.param(_set("outputs.0.confidence", [0] * 9 + [11]), "histogram-sum", id="confidence-not-summing"),
    pytest.param(_set("outputs.0.role", "segmentation"), "out-of-range", id="unknown-role"),
    pytest.param(_set("outputs.1.scores", [0] * 5 + [50] + [0] * 4), "sketch-inconsistent", id="det-count"),
    pytest.param(_set("outputs.1.score_sum", 9.0), "out-of-range", id="score-sum-above-detections"),
    pytest.param(_set("outputs.1.score_sum", 4.0), "sketch-inconsistent", id="score-sum-outside-bins"),
    pytest.param(_set("inferences", 10**9), "out-of-range", id="inferences-above-window"),
    pytest.param(_set("inputs.0.n.0", True), "wrong-type", id="bool-count"),
]


def test_a_device_sketch_satisfies_the_contract() -> None:
    parsed = parse_payload("health", good())
    assert parsed.inferences == 10 and parsed.inputs[0].bins[2] == (50, 50, 0, 0, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("mutate, reason", MUTATIONS)
def test_malformed_or_oversized_sketches_are_refused(mutate: Any, reason: str) -> None:
    payload = copy.deepcopy(good())
    mutate(payload)
    with pytest.raises(ContractError) as refused:
        parse_payload("health", payload)
    assert refused.value.reason == reason


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path)


def test_ingest_stores_sketches_and_quarantines_bad_ones(
    start_server: Any, deployment: Any, tmp_path: Path, url: str
) -> None:
    server: LiveServer = fresh_server(start_server, deployment, tmp_path, url)
    target = bundle(deployment, "1.1.0")
    token = register(server, "sketcher")
    oversized = good(target)
    oversized["outputs"][0]["classes"] = [0] * 5000 + [10]
    malformed = good(target)
    malformed["inputs"][0]["bins"][0][0] = 11
    events = [event("health", good(target)), event("health", oversized), event("health", malformed)]
    status, body = post(server, token, batch("sketcher", events))
    assert status == 200, body
    assert (body["stored"], body["quarantined"]) == (1, 2)
    assert sorted(r[0] for r in quarantined(server, "sketcher")) == ["histogram-length", "histogram-sum"]
    assert [row[0] for row in stored(server, "sketcher")] == ["health"]


def test_a_newer_profile_format_installs_without_reference_while_a_broken_v1_is_refused() -> None:
    # health.json is optional metadata: a device must not refuse every future release because the build
    # host writes a profile format newer than the one it knows, but a malformed profile it knows is refused.
    from device_runtime._loading import _parse_health
    from device_runtime.errors import InstallError

    assert _parse_health(b'{"schema": "edgekit.health/v2", "anything": [1, 2, 3]}') is None
    with pytest.raises(InstallError, match=r"health\.json"):
        _parse_health(b'{"schema": "edgekit.health/v1", "samples": 0, "inputs": {}, "outputs": {}}')
    with pytest.raises(InstallError, match=r"health\.json"):
        _parse_health(b'{"schema": "something/else"}')
