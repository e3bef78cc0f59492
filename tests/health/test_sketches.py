"""Health sketches merge exactly, and the payload the device reports satisfies the contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device_runtime.health import HealthMonitor, HealthSketch, build_profile, channel_axis
from device_runtime.runtime import PredictionResult
from device_runtime.telemetry_contract import parse_payload

BUNDLE = "ab" * 32


def _result(rng: np.random.Generator, detection: bool = False) -> PredictionResult:
    index = int(rng.integers(0, 7))
    decoded = {}
    if detection:
        count = int(rng.integers(0, 30))
        decoded["boxes"] = {
            "role": "detection",
            "detections": [{"score": float(s)} for s in rng.random(count)],
        }
    return PredictionResult("p", {}, [(index, float(rng.random()))], "m", "1", BUNDLE, 1.0, index, decoded)


def _inputs(rng: np.random.Generator, count: int) -> list[dict[str, np.ndarray]]:
    return [
        {
            "image": rng.normal(0.5, 0.2, (1, 3, 40, 40)).astype(np.float32),  # NCHW: 3 channels
            "extra": rng.normal(size=(1, 17)).astype(np.float32),  # one channel
        }
        for _ in range(count)
    ]


def _observe(monitor: HealthMonitor, profile, feeds, results, start: float) -> HealthSketch:
    for i, (f, r) in enumerate(zip(feeds, results, strict=True)):
        monitor.observe(BUNDLE, "1.0.0", profile, f, r, start + i)
    (payload,) = monitor.drain(start + len(feeds))
    parse_payload("health", json.loads(json.dumps(payload)))  # what the wire carries, accepted
    return HealthSketch.from_payload(payload)


def test_merge_of_parts_equals_sketch_of_the_whole() -> None:
    rng = np.random.default_rng(0)
    reference = _inputs(rng, 40)
    profile = build_profile(reference, [_result(rng) for _ in reference])
    feeds = _inputs(rng, 300)  # more than the monitor's fold buffer, in uneven parts
    results = [_result(rng, detection=True) for _ in feeds]
    whole = _observe(HealthMonitor(every=10_000, seconds=3600), profile, feeds, results, 0.0)
    merged = HealthSketch()
    for a, b in ((0, 7), (7, 150), (150, 300)):
        merged.merge(
            _observe(HealthMonitor(every=10_000, seconds=3600), profile, feeds[a:b], results[a:b], 0)
        )
    assert merged.inferences == whole.inferences == 300
    for name, channels in whole.inputs.items():
        for mine, theirs in zip(merged.inputs[name], channels, strict=True):
            assert mine.n == theirs.n and mine.bins == theirs.bins  # counts: exactly
            assert np.isclose(mine.mean, theirs.mean, rtol=1e-12, atol=1e-15)
            assert np.isclose(mine.m2, theirs.m2, rtol=1e-9)
    for name, out in whole.outputs.items():
        assert merged.outputs[name].counts == out.counts
        assert merged.outputs[name].scores == out.scores
        assert np.isclose(merged.outputs[name].score_sum, out.score_sum)


def test_channel_moments_match_numpy_on_the_sampled_values() -> None:
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(3.0, 2.0, (1, 8, 8, 1)).astype(np.float32)} for _ in range(130)]
    sketch = _observe(
        HealthMonitor(every=10_000, seconds=3600), None, feeds, [_result(rng) for _ in feeds], 0
    )
    values = np.concatenate([f["x"].reshape(-1) for f in feeds]).astype(np.float64)
    (channel,) = sketch.inputs["x"]
    assert channel.n == values.size
    assert np.isclose(channel.mean, values.mean()) and np.isclose(channel.variance, values.var())
    assert channel.bins == []  # no reference profile: no bins


def test_reference_bins_are_deciles_of_the_reference_data() -> None:
    rng = np.random.default_rng(2)
    reference = _inputs(rng, 50)
    profile = build_profile(reference, [_result(rng) for _ in reference])
    image = profile.inputs["image"]
    assert image.axis == 1 and image.edges.shape == (3, 9)
    assert np.allclose(image.expected, 0.1, atol=0.01)
    assert set(profile.outputs["top-1"]) == {"role", "classes", "confidence"}
    assert channel_axis((1, 224, 224, 3)) == 3 and channel_axis((1, 64)) is None


def test_windows_are_reported_by_count_and_by_age() -> None:
    rng = np.random.default_rng(3)
    monitor = HealthMonitor(every=5, seconds=60.0)
    feed = {"x": np.zeros((1, 4), np.float32)}
    for i in range(4):
        monitor.observe(BUNDLE, None, None, feed, _result(rng), float(i))
    assert not monitor.due(4.0) and monitor.due(61.0)
    monitor.observe(BUNDLE, None, None, feed, _result(rng), 5.0)
    assert monitor.due(5.0)
    (payload,) = monitor.drain(5.0)
    assert payload["inferences"] == 5 and monitor.drain(6.0) == []


def test_non_finite_inputs_are_left_out_and_the_payload_stays_valid() -> None:
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(20)]  # NCHW
    feeds[3]["x"][0, 1, 1, 0] = np.nan
    feeds[5]["x"][0, 0, 2, 1] = np.inf
    sketch = _observe(
        HealthMonitor(every=10_000, seconds=3600), None, feeds, [_result(rng) for _ in feeds], 0
    )
    assert all(np.isfinite(c.mean) and np.isfinite(c.m2) for c in sketch.inputs["x"])
    assert [c.n for c in sketch.inputs["x"]] == [20 * 16 - 2] * 2  # without the two non-finite pixels


def test_an_input_the_sketch_cannot_read_never_costs_the_window() -> None:
    # The input's rank changes mid-window (a caller feeding another shape): that input's channels stop,
    # while every inference still lands in the class and confidence histograms, so the window's payload
    # still satisfies the contract instead of being refused whole.
    rng = np.random.default_rng(7)
    monitor = HealthMonitor(every=10_000, seconds=3600)
    for i in range(6):
        shape = (1, 3, 8, 8) if i < 3 else (5,)
        feed = {"x": rng.random(shape, dtype=np.float32)}
        monitor.observe(BUNDLE, "1.0.0", None, feed, _result(rng), float(i))
    (payload,) = monitor.drain(6.0)
    parsed = parse_payload("health", json.loads(json.dumps(payload)))
    assert payload["inferences"] == 6
    assert parsed is not None


def test_an_event_that_does_not_merge_leaves_the_device_as_it_was() -> None:
    from device_runtime.health import ChannelSketch
    from edgekit.rollout.health_sketches import DeviceHealth

    device = DeviceHealth("d1", "treatment")
    three = HealthSketch(10, 60.0)
    three.inputs["x"] = [ChannelSketch(10, 0.5, 1.0, [5, 5]) for _ in range(3)]
    device.add(100.0, three)
    before = json.dumps(device.sketch.to_payload(BUNDLE, "1"), sort_keys=True)
    two = HealthSketch(4, 30.0)
    two.inputs["x"] = [ChannelSketch(4, 0.1, 1.0, [2, 2]) for _ in range(2)]
    with pytest.raises(ValueError, match="channels"):
        device.add(200.0, two)
    assert json.dumps(device.sketch.to_payload(BUNDLE, "1"), sort_keys=True) == before
    assert (device.first, device.last) == (100.0, 100.0)
