"""The `shadow` telemetry kind: what a shadow window may say, and everything outside it refused."""

from __future__ import annotations

from typing import Any

import pytest

from device_runtime._spec import OUTPUT_KINDS
from device_runtime.telemetry_contract import (
    LATENCY_BUCKETS_MS,
    MAX_HEALTH_OUTPUTS,
    MAX_INFERENCES_PER_S,
    SHADOW_ROLES,
    ContractError,
    ShadowOutput,
    ShadowPayload,
    check_batch,
    parse_payload,
)

BUCKETS = len(LATENCY_BUCKETS_MS) + 1


def shadow(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "bundle_id": "b" * 64,
        "served_bundle_id": "a" * 64,
        "compared": 10,
        "agreed": 9,
        "outputs": {
            "probs": {"role": "classification", "compared": 10, "agreed": 9},
            "embedding": {"role": "tensor", "compared": 10, "agreed": 10},
        },
        "failures": 1,
        "timeouts": 0,
        "skipped_cpu": 3,
        "latency_histogram": [4, 6] + [0] * (BUCKETS - 2),
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


def test_the_roles_are_the_bundle_spec_output_kinds() -> None:
    assert SHADOW_ROLES == OUTPUT_KINDS


def test_a_shadow_window_parses_to_its_typed_payload() -> None:
    parsed = parse_payload("shadow", shadow(version="1.1.0", window_s=60.0, stopped=True))
    assert isinstance(parsed, ShadowPayload)
    assert parsed.outputs == (
        ShadowOutput("embedding", "tensor", 10, 10),
        ShadowOutput("probs", "classification", 10, 9),
    )
    assert (parsed.compared, parsed.agreed, parsed.failures, parsed.skipped_cpu) == (10, 9, 1, 3)
    assert parsed.stopped and parsed.window_s == 60.0 and parsed.version == "1.1.0"
    # A window with nothing compared (every run failed, or skipped) is a valid report.
    empty = parse_payload(
        "shadow", shadow(compared=0, agreed=0, outputs={}, failures=3, latency_histogram=[0] * BUCKETS)
    )
    assert isinstance(empty, ShadowPayload) and empty.outputs == ()


def test_a_batch_carries_a_shadow_event() -> None:
    batch = {
        "schema": "edgekit.telemetry/v1",
        "batch_id": "b1",
        "device_id": "d1",
        "sent_at": 1_700_000_000.0,
        "events": [{"id": "e1", "kind": "shadow", "time": 1_700_000_000.0, "payload": shadow()}],
    }
    checked = check_batch(batch, now=1_700_000_000.0)
    assert not checked.rejected and checked.accepted[0].bundle_id == "b" * 64


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (shadow(agreed=11), "sketch-inconsistent"),
        (shadow(compared=-1), "out-of-range"),
        (shadow(compared=True), "wrong-type"),
        (shadow(failures=1.5), "wrong-type"),
        (shadow(served_bundle_id="A" * 64), "bad-bundle-id"),
        (shadow(bundle_id=...), "missing-field"),
        (shadow(timeouts=...), "missing-field"),
        (shadow(extra=1), "unknown-field"),
        (shadow(raw_input=[0.5]), "unknown-field"),
        (shadow(outputs=[]), "wrong-type"),
        (shadow(outputs={"p": {"role": "vibes", "compared": 10, "agreed": 9}}), "out-of-range"),
        (shadow(outputs={"p": {"role": "tensor", "compared": 10, "agreed": 9, "x": 0}}), "unknown-field"),
        (shadow(outputs={"p": {"role": "tensor", "compared": 5, "agreed": 6}}), "sketch-inconsistent"),
        (shadow(outputs={"p": {"role": "tensor", "compared": 11, "agreed": 9}}), "sketch-inconsistent"),
        (shadow(outputs={"p": {"role": "tensor", "compared": 10, "agreed": 8}}), "sketch-inconsistent"),
        (shadow(outputs={}), "sketch-inconsistent"),
        (
            shadow(
                outputs={
                    f"o{i}": {"role": "tensor", "compared": 10, "agreed": 9}
                    for i in range(MAX_HEALTH_OUTPUTS + 1)
                }
            ),
            "too-long",
        ),
        (shadow(outputs={"\x00": {"role": "tensor", "compared": 10, "agreed": 9}}), "bad-id"),
        (shadow(latency_histogram=[10]), "histogram-length"),
        (shadow(latency_histogram=[9] + [0] * (BUCKETS - 1)), "histogram-sum"),
        (shadow(window_s=float("inf")), "not-finite"),
        (shadow(window_s=1.0, skipped_cpu=MAX_INFERENCES_PER_S + 1), "out-of-range"),
        (shadow(stopped="yes"), "wrong-type"),
        ("not an object", "not-object"),
    ],
)
def test_a_malformed_shadow_payload_is_refused_with_its_reason(payload: Any, reason: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_payload("shadow", payload)
    assert caught.value.reason == reason
