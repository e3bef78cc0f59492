"""The telemetry wire contract: what a real runtime records satisfies it; what it refuses, it names."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from device_runtime.runtime import Runtime
from device_runtime.telemetry_contract import (
    CLOCK_TOLERANCE_S,
    EVENT_KINDS,
    LATENCY_BUCKETS_MS,
    ContractError,
    InferencesPayload,
    check_batch,
    parse_event,
    parse_payload,
)
from tests.device_runtime.runtime_fixtures import Releases, build_releases, config, sample

BUNDLE = "ab" * 32


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


def inferences(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "bundle_id": BUNDLE,
        "version": "1.0.0",
        "inferences": 10,
        "errors": 1,
        "latency_ms_buckets": [0, 0, 10] + [0] * (len(LATENCY_BUCKETS_MS) - 2),
        "latency_ms_sum": 30.0,
        "window_s": 5.0,
    }
    payload.update(changes)
    return payload


def test_every_event_a_real_runtime_records_satisfies_the_contract(
    tmp_path: Path, releases: Releases
) -> None:
    rt = Runtime(config(tmp_path / "store", releases))
    try:
        rt.install(releases.bundles["1.0.0"])
        results = [rt.predict(sample()) for _ in range(5)]
        rt.feedback(results[0].prediction_id, results[0].top_k[0][0])
        rt.install(releases.bundles["1.1.0"])  # a trial
        rt.predict(sample())
        rt.revert("operator asked")  # trial reverted
        with pytest.raises(Exception):  # noqa: B017 - the refused install is what is recorded
            rt.install(releases.bundles["1.1.0"])  # reverted here before: refused
        rt.telemetry.flush()
        events = rt.telemetry.pending(1000)
        assert rt.telemetry.stats()["invalid"] == 0
        kinds = set()
        for event in events:
            parsed = parse_event(
                {"id": event.event_id, "kind": event.kind, "time": event.time, "payload": event.payload}
            )
            kinds.add(parsed.kind)
        assert {"install", "inferences", "feedback", "trial"} <= kinds <= set(EVENT_KINDS)
        aggregate = next(parse_payload(e.kind, e.payload) for e in events if e.kind == "inferences")
        assert isinstance(aggregate, InferencesPayload) and aggregate.window_s >= 0
    finally:
        rt.close()


@pytest.mark.parametrize(
    "payload, reason",
    [
        pytest.param(inferences(inferences=10**12), "out-of-range", id="10**12-inferences"),
        pytest.param(inferences(inferences="x"), "wrong-type", id="string"),
        pytest.param(inferences(inferences=True), "wrong-type", id="bool"),
        pytest.param(inferences(errors=11), "errors-exceed-inferences", id="errors-above-inferences"),
        pytest.param(inferences(latency_ms_buckets="zz"), "wrong-type", id="histogram-string"),
        pytest.param(inferences(latency_ms_buckets=[10]), "histogram-length", id="histogram-length"),
        pytest.param(
            inferences(latency_ms_buckets=[0] * 12 + [10]), "latency-inconsistent", id="histogram-tail"
        ),
        pytest.param(
            inferences(latency_ms_buckets=[0, 0, 9] + [0] * 10), "histogram-sum", id="histogram-sum"
        ),
        pytest.param(inferences(latency_ms_sum=float("inf")), "not-finite", id="infinite"),
        pytest.param(inferences(window_s=-1.0), "out-of-range", id="negative-window"),
        pytest.param(inferences(bundle_id="<script>"), "bad-bundle-id", id="script-bundle"),
        pytest.param(inferences(extra=1), "unknown-field", id="unknown-field"),
        pytest.param({"bundle_id": BUNDLE}, "missing-field", id="missing-fields"),
    ],
)
def test_payload_violations_name_their_reason(payload: dict[str, Any], reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_payload("inferences", payload)
    assert caught.value.reason == reason


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ContractError) as caught:
        parse_payload("dashboard-row", {})
    assert caught.value.reason == "unknown-kind"


def test_check_batch_rebases_a_skewed_clock_and_rules_times_by_the_receiver() -> None:
    now = 1_800_000_000.0
    skew = 40 * 86_400.0

    def event(i: int, at: float) -> dict[str, Any]:
        return {"id": f"e{i}", "kind": "inferences", "time": at, "payload": inferences()}

    document = {
        "schema": "edgekit.telemetry/v1",
        "batch_id": "b",
        "device_id": "d",
        "sent_at": now + skew,
        "events": [
            event(0, now + skew - 60),
            event(1, now + skew + 2 * CLOCK_TOLERANCE_S),
            event(0, now + skew),
        ],
    }
    result = check_batch(document, now=now)
    assert result.error is None and result.rebased and result.skew_s == skew
    assert [c.time for c in result.accepted] == [now - 60]
    assert [(r.position, r.reason) for r in result.rejected] == [(1, "time-window"), (2, "duplicate-event")]
    assert check_batch({**document, "sent_at": 1e400}, now=now).error_reason == "out-of-range"
    assert check_batch({**document, "events": []}, now=now).error_reason == "out-of-range"
    assert check_batch([], now=time.time()).error_reason == "not-object"
