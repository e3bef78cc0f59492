"""The rollout status JSON and the dashboard's label-free parts on the real server: bytes saved by deltas
(from devices' ``download`` events, bounded against the signed TUF lengths), the thresholds the gates apply,
and a page that draws class bars and drift charts from untrusted values without running any of them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.conftest import ADMIN_TOKEN
from tests.server.fleet import HOUR, send, start_rollout


def _status(server: Any, rollout_id: str) -> dict[str, Any]:
    status, body = server.http.request("GET", f"/v1/admin/rollouts/{rollout_id}", token=ADMIN_TOKEN)
    assert status == 200, body
    return dict(body)


def test_status_counts_bytes_saved_by_deltas_once_per_device_against_the_signed_length(fleet: Any) -> None:
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.1.0", "1.0.0", [10, 50, 100])
    target, base = plan.target.bundle_id, plan.baseline.bundle_id
    length = next(
        t["length"]
        for t in server.app.state.service.repo.status()["targets"]
        if (t.get("custom") or {}).get("bundle_id") == target
    )
    devices = sorted(tokens)[:4]
    delta = {"bundle_id": target, "method": "delta", "base_bundle_id": base, "full_bytes": length}
    # two devices by delta (one retried: its latest download counts, once), one full after a fallback
    # that claims a bundle 1000x its real size, one full with no base
    send(server, devices[0], tokens[devices[0]], [("download", clock.now, {**delta, "bytes": 300})])
    send(
        server,
        devices[1],
        tokens[devices[1]],
        [
            ("download", clock.now, {**delta, "bytes": 900}),
            ("download", clock.now + 60, {**delta, "bytes": 100}),
        ],
    )
    fallback = {
        "bundle_id": target,
        "method": "full",
        "bytes": length + 50,
        "full_bytes": 1000 * length,
        "base_bundle_id": base,
        "fallback": "hash-mismatch",
    }
    send(server, devices[2], tokens[devices[2]], [("download", clock.now, fallback)])
    plain = {"bundle_id": target, "method": "full", "bytes": length, "full_bytes": length}
    send(server, devices[3], tokens[devices[3]], [("download", clock.now, plain)])
    clock.now += HOUR

    downloads = _status(server, plan.rollout_id)["downloads"]
    mine = downloads["bundles"][target]
    assert (mine["devices"], mine["delta"], mine["full"]) == (4, 2, 2), mine
    assert mine["bytes"] == 300 + 100 + (length + 50) + length
    assert mine["full_bytes"] == 4 * length, "the signed TUF length, never the device's claim"
    assert mine["saved_bytes"] == 4 * length - mine["bytes"]
    assert mine["saved_share"] == pytest.approx(mine["saved_bytes"] / (4 * length))
    assert mine["fallbacks"] == {"hash-mismatch": 1}
    assert downloads["bundles"][base]["devices"] == 0 and downloads["skipped_rows"] == 0

    # the dashboard's JSON carries the same figures, with the label-free parts and their thresholds
    status, page = server.http.request("GET", "/v1/dashboard", token=ADMIN_TOKEN)
    assert status == 200, page
    entry = page["rollouts"][0]
    assert entry["downloads"]["bundles"][target] == mine
    assert {"health", "shadow", "thresholds"} <= set(entry)
    assert "reference" not in (entry["health"] or {}), "the page gets shares and PSI, not the edges"


def test_a_stored_download_row_the_contract_refuses_is_skipped_and_counted(fleet: Any) -> None:
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.1.0", "1.0.0", [10, 50, 100])
    device = sorted(tokens)[0]
    send(
        server,
        device,
        tokens[device],
        [
            (
                "download",
                clock.now,
                {"bundle_id": plan.target.bundle_id, "method": "full", "bytes": 5, "full_bytes": 5},
            )
        ],
    )
    database = server.app.state.database
    database.execute(  # a row stored before ingest checked it (or by hand): not counted, never raised
        "UPDATE events SET payload = ? WHERE kind = 'download'", ('{"bundle_id": "x", "method": "delta"}',)
    )
    downloads = _status(server, plan.rollout_id)["downloads"]
    assert downloads["skipped_rows"] == 1 and downloads["bundles"][plan.target.bundle_id]["devices"] == 0


def _health(bundle_id: str, classes: list[int]) -> dict[str, Any]:
    """A `health` payload of one window: predicted-class and confidence counts, no input sketches."""
    from device_runtime.health import HealthSketch, OutputSketch
    from device_runtime.telemetry_contract import CONFIDENCE_BINS

    total = sum(classes)
    confidence = [0] * CONFIDENCE_BINS
    confidence[-1] = total
    output = OutputSketch("classification", classes, confidence)
    sketch = HealthSketch(total, 600.0, outputs={"logits": output})
    return sketch.to_payload(bundle_id, None)


def test_the_last_stage_judges_health_without_a_control_arm(fleet: Any) -> None:
    """At 100% every device is treatment: the label-free evidence has no control arm, and the evaluation
    still decides (class shift "not judged", no evaluation error)."""
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.1.0", "1.0.0", [100])
    for device_id in sorted(tokens)[:12]:
        payload = _health(plan.target.bundle_id, [20, 15, 15, 10])
        send(server, device_id, tokens[device_id], [("health", clock.now + 60, payload)])
    clock.now += 3 * HOUR
    status, body = server.http.request("POST", "/v1/admin/evaluate", token=ADMIN_TOKEN)
    assert status == 200 and len(body) == 1, body
    decision = body[0]["decision"]
    assert decision["outcome"] != "error", decision
    records = {r["metric"]: r for r in decision["records"]}
    assert records["class_shift"]["outcome"] == "pass", records["class_shift"]
    assert "no control arm" in records["class_shift"]["detail"]
    health = _status(server, plan.rollout_id)["health"]
    assert health["treatment"]["devices"] == 12 and health["control"]["devices"] == 0
