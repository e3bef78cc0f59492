"""Behaviour of `device_runtime.runtime.Runtime`, in-process, with real signed bundles of real ONNX models.

Install -> self-test -> activate -> trial -> commit or revert; refusals that leave the previous model serving
(rollback, other hardware, tampering, self-test failure); telemetry that is
bounded and never breaks inference; attack 11 (a file swapped between verify and load); a lost or torn
state.json rebuilt from the slots. Bundles and keys come from `runtime_fixtures` (built once per module).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_runtime.errors import EngineError, InputError, InstallError, NoModelError
from device_runtime.runtime import Runtime
from device_runtime.state import load_state
from signing.errors import PolicyError, VerificationError
from tests.device_runtime.runtime_fixtures import (
    LABELS,
    MODEL_NAME,
    NOISY,
    OTHER_HARDWARE,
    FakeClock,
    Releases,
    build_releases,
    config,
    expected_logits,
    make_store,
    reset_store,
    sample,
    trial_events,
)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> dict[str, Path]:
    """Stores built once and copied per test: 1.0.0 committed; 1.0.0 then 1.1.0 committed."""
    folder = tmp_path_factory.mktemp("templates")
    return {
        "one": make_store(folder / "one", releases, ["1.0.0"]),
        "two": make_store(folder / "two", releases, ["1.0.0", "1.1.0"]),
    }


@pytest.fixture
def runtimes() -> Any:
    """Runtimes opened by a test, closed after it."""
    opened: list[Runtime] = []

    def open_runtime(store: Path, releases: Releases, **overrides: Any) -> Runtime:
        rt = Runtime(config(store, releases, **overrides))
        opened.append(rt)
        return rt

    yield open_runtime
    for rt in opened:
        with contextlib.suppress(Exception):  # a test may have closed the database under it on purpose
            rt.close()


def serves(rt: Runtime, version: str) -> None:
    """`rt` predicts with exactly release `version`'s weights."""
    x = sample(3, seed=11)
    result = rt.predict(x)
    assert result.version == version
    np.testing.assert_allclose(result.outputs["logits"], expected_logits(version, x), rtol=1e-5, atol=1e-5)


def no_incoming(store: Path) -> None:
    assert not list((store / "slots").glob(".incoming-*"))


def events(rt: Runtime, kind: str) -> list[dict[str, Any]]:
    return [e.payload for e in rt.telemetry.pending(100_000) if e.kind == kind]


# ---- install, predict, trial --------------------------------------------------------------------------


def test_install_activates_and_predict_returns_outputs_top_k_and_provenance(
    tmp_path: Path, releases: Releases, runtimes: Any
) -> None:
    rt = runtimes(tmp_path, releases)
    with pytest.raises(NoModelError):
        rt.predict(sample())
    result = rt.install(releases.bundles["1.0.0"])
    assert (result.name, result.version, result.slot) == (MODEL_NAME, "1.0.0", "a")
    assert result.bundle_id == releases.bundle_ids["1.0.0"]
    assert result.self_test and min(result.self_test.values()) >= 30.0
    status = rt.status()
    assert status["active"]["version"] == "1.0.0" and status["candidate"] is True
    assert status["engine"] == "onnxruntime"

    x = sample(2, seed=3)
    prediction = rt.predict(x)
    logits = expected_logits("1.0.0", x)
    np.testing.assert_allclose(prediction.outputs["logits"], logits, rtol=1e-5, atol=1e-5)
    assert prediction.version == "1.0.0" and prediction.model == MODEL_NAME
    assert prediction.bundle_id == releases.bundle_ids["1.0.0"]
    best = int(logits[0].argmax())
    assert prediction.top_k[0][0] == LABELS[best]
    assert prediction.top_k[0][1] == pytest.approx(float(logits[0][best]), rel=1e-5)
    assert prediction.latency_ms >= 0.0
    assert (tmp_path / "state.json").is_file() and not (tmp_path / "inflight").exists()
    no_incoming(tmp_path)
    again = rt.install(releases.bundles["1.0.0"])
    assert again.already_active


def test_trial_commits_only_after_n_inferences_and_t_seconds(
    tmp_path: Path, releases: Releases, runtimes: Any
) -> None:
    clock = FakeClock()
    rt = runtimes(tmp_path / "n-first", releases, trial_inferences=3, trial_seconds=60.0, clock=clock)
    rt.install(releases.bundles["1.0.0"])
    for _ in range(5):  # enough inferences, not enough time
        rt.predict(sample())
    assert rt.status()["trial"]["successes"] == 5 and rt.status()["floors"] == {}
    clock.advance(59.0)
    rt.predict(sample())
    assert rt.status()["candidate"] is True
    clock.advance(1.0)
    rt.predict(sample())
    assert rt.status()["candidate"] is False
    assert rt.status()["floors"] == {MODEL_NAME: 1}
    assert [e["version"] for e in trial_events(rt, "committed")] == ["1.0.0"]

    clock = FakeClock()
    rt = runtimes(tmp_path / "t-first", releases, trial_inferences=3, trial_seconds=60.0, clock=clock)
    rt.install(releases.bundles["1.0.0"])
    clock.advance(3600.0)  # enough time, not enough inferences
    rt.predict(sample())
    rt.predict(sample())
    assert rt.status()["candidate"] is True
    rt.predict(sample())
    assert rt.status()["candidate"] is False
    # the commit survives a restart
    assert load_state(tmp_path / "t-first" / "state.json").trial is None  # type: ignore[union-attr]


# ---- refusals: the previous model keeps serving ---------------------------------------------------------


def test_older_release_after_commit_is_refused_as_rollback(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["two"], tmp_path / "store")
    rt = runtimes(store, releases)
    with pytest.raises(PolicyError, match="rollback"):
        rt.install(releases.bundles["1.0.0"])
    assert rt.status()["active"]["version"] == "1.1.0"
    serves(rt, "1.1.0")
    no_incoming(store)
    refused = [e for e in events(rt, "install") if e["outcome"] == "refused"]
    assert refused[-1]["reason"] == "rollback"
    # still refused after a restart (the floor is persisted)
    rt.close()
    rt = runtimes(store, releases)
    with pytest.raises(PolicyError, match="rollback"):
        rt.install(releases.bundles["1.0.0"])
    serves(rt, "1.1.0")


def test_bundle_for_other_hardware_is_refused(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases)
    with pytest.raises(PolicyError, match="hardware"):
        rt.install(releases.bundles[OTHER_HARDWARE])
    serves(rt, "1.0.0")
    no_incoming(store)
    assert events(rt, "install")[-1]["reason"] == "hardware"


def test_the_refusal_reason_is_the_errors_type_not_a_word_in_its_message(
    tmp_path: Path, releases: Releases
) -> None:
    # A device named with the word "rollback" refused for its hardware reports "hardware", not "rollback".
    import dataclasses

    rt = Runtime(dataclasses.replace(config(tmp_path / "store", releases), hardware_id="rollback-rig"))
    try:
        with pytest.raises(PolicyError) as caught:
            rt.install(releases.bundles[OTHER_HARDWARE])
        assert caught.value.reason == "hardware" and "rollback-rig" in str(caught.value)
        assert events(rt, "install")[-1]["reason"] == "hardware"
    finally:
        rt.close()


def _model_offset(data: bytes, releases: Releases, version: str) -> int:
    model = (releases.folder / f"tiny-{version}.onnx").read_bytes()
    offset = data.find(model)
    assert offset > 0
    return offset


@pytest.mark.parametrize("tamper", ["flip-model-byte", "change-a-label", "truncate", "garbage"])
def test_tampered_bundle_is_refused_and_the_active_model_is_unchanged(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any, tamper: str
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    data = bytearray(releases.bundles["1.1.0"].read_bytes())
    if tamper == "flip-model-byte":
        data[_model_offset(bytes(data), releases, "1.1.0") + 40] ^= 0x01
    elif tamper == "change-a-label":
        at = bytes(data).index("\n".join(LABELS).encode())
        data[at : at + 3] = b"dog"  # same size, different bytes
    elif tamper == "truncate":  # inside the model member (the archive's zero padding may go unnoticed)
        del data[_model_offset(bytes(data), releases, "1.1.0") + 100 :]
    else:
        data = bytearray(b"not a bundle at all" * 100)
    bad = tmp_path / "bad.ekb"
    bad.write_bytes(bytes(data))
    rt = runtimes(store, releases)
    before = rt.status()["active"]
    with pytest.raises(VerificationError):
        rt.install(bad)
    assert rt.status()["active"] == before
    serves(rt, "1.0.0")
    no_incoming(store)
    assert events(rt, "install")[-1]["outcome"] == "refused"


def test_self_test_failure_of_a_real_model_is_refused(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    """The noisy release is validly signed, but its model's outputs depend on the engine's random state.

    onnxruntime seeds RandomNormalLike from a process-wide seed (the same in every process by default, so
    the build host and this process would agree); this device uses another one, so the model reproduces
    nothing of its golden outputs. Only the noisy model has random operators."""
    import onnxruntime

    onnxruntime.set_seed(20250101)
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases)
    with pytest.raises(InstallError) as caught:
        rt.install(releases.bundles[NOISY])
    assert caught.value.reason == "self-test"
    assert rt.status()["active"]["version"] == "1.0.0" and rt.status()["candidate"] is False
    serves(rt, "1.0.0")
    no_incoming(store)
    assert events(rt, "install")[-1]["reason"] == "self-test"


def test_self_test_failure_on_this_devices_engine_is_refused(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any, monkeypatch: Any
) -> None:
    """A good bundle, but this device's engine computes different numbers: simulated by patching
    `device_runtime.engines.load_engine` (which `Runtime._load` imports at call time) to perturb outputs."""
    import device_runtime.engines as engines

    real_load = engines.load_engine

    class Perturbed:
        def __init__(self, engine: Any) -> None:
            self._engine = engine
            self.inputs, self.outputs, self.kind = engine.inputs, engine.outputs, engine.kind

        def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: v[:, ::-1].copy() for k, v in self._engine.run(feeds).items()}

    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases)
    serves(rt, "1.0.0")
    monkeypatch.setattr(engines, "load_engine", lambda *a, **k: Perturbed(real_load(*a, **k)))
    with pytest.raises(InstallError) as caught:
        rt.install(releases.bundles["1.1.0"])
    assert caught.value.reason == "self-test" and "SQNR" in str(caught.value)
    monkeypatch.undo()
    assert rt.status()["active"]["version"] == "1.0.0"
    serves(rt, "1.0.0")
    no_incoming(store)


# ---- strikes and local revert ----------------------------------------------------------------------------


def test_inference_errors_in_trial_are_strikes_and_three_revert(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases, trial_inferences=100)
    rt.install(releases.bundles["1.1.0"])
    serves(rt, "1.1.0")

    def broken(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise EngineError("onnxruntime failed to run the model: injected")

    rt._ensure_loaded().engine.run = broken
    for strike in (1, 2):
        with pytest.raises(EngineError):
            rt.predict(sample())
        assert rt.status()["trial"]["strikes"] == strike
        assert rt.status()["active"]["version"] == "1.1.0"
        assert not (store / "inflight").exists()
    with pytest.raises(EngineError):
        rt.predict(sample())
    status = rt.status()
    assert status["active"]["version"] == "1.0.0" and status["previous"] is None
    assert status["trial"] is None and releases.bundle_ids["1.1.0"] in status["bad_releases"]
    serves(rt, "1.0.0")  # reloaded from its slot, not the broken engine
    reverted = trial_events(rt, "reverted")
    assert len(reverted) == 1 and reverted[0]["version"] == "1.1.0" and reverted[0]["strikes"] == 3

    with pytest.raises(InstallError) as caught:
        rt.install(releases.bundles["1.1.0"])
    assert caught.value.reason == "previously-reverted"
    serves(rt, "1.0.0")
    rt.close()
    rt = runtimes(store, releases)  # the verdict survives a restart
    assert rt.status()["active"]["version"] == "1.0.0"
    with pytest.raises(InstallError, match="reverted"):
        rt.install(releases.bundles["1.1.0"])
    assert rt.install(releases.bundles["1.2.0"]).version == "1.2.0"  # a new release is welcome


def test_errors_after_commit_are_not_strikes(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["two"], tmp_path / "store")
    rt = runtimes(store, releases)

    def broken(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise EngineError("injected")

    rt._ensure_loaded().engine.run = broken
    for _ in range(5):
        with pytest.raises(EngineError):
            rt.predict(sample())
    assert rt.status()["active"]["version"] == "1.1.0"


def test_manual_revert(tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any) -> None:
    store = reset_store(templates["two"], tmp_path / "store")
    rt = runtimes(store, releases)
    assert rt.revert("operator") is True
    serves(rt, "1.0.0")
    assert rt.revert() is False  # nothing further back
    assert trial_events(rt, "reverted")[0]["reasons"] == ["operator"]


# ---- requests, feedback, telemetry -----------------------------------------------------------------------


def test_feedback_records_accuracy(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases)
    first = rt.predict(sample(1, seed=1))
    second = rt.predict(sample(1, seed=2))
    right = first.top_k[0][0]
    wrong = next(label for label in LABELS if label != second.top_k[0][0])
    assert rt.feedback(first.prediction_id, right) is True
    assert rt.feedback(second.prediction_id, wrong) is True
    assert rt.feedback(first.prediction_id, right) is False  # used up
    assert rt.feedback("unknown", right) is False
    recorded = events(rt, "feedback")
    assert [e["correct"] for e in recorded] == [True, False]
    assert {e["bundle_id"] for e in recorded} == {releases.bundle_ids["1.0.0"]}


@pytest.mark.parametrize(
    "request_",
    [
        np.zeros((1, 5), np.float32),
        np.zeros((8,), np.float32),
        np.zeros((1, 8, 1), np.float32),
        {"y": np.zeros((1, 8), np.float32)},
        np.array([["a"] * 8]),
    ],
    ids=["wrong-width", "missing-batch", "extra-dim", "unknown-name", "strings"],
)
def test_bad_request_is_an_input_error_and_the_runtime_keeps_serving(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any, request_: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases, trial_inferences=100)
    rt.install(releases.bundles["1.1.0"])  # in trial: a bad request must not count as a strike
    with pytest.raises(InputError):
        rt.predict(request_)
    assert rt.status()["trial"]["strikes"] == 0
    assert not (store / "inflight").exists()
    serves(rt, "1.1.0")


def test_telemetry_queue_is_bounded_and_counts_drops(
    tmp_path: Path, releases: Releases, runtimes: Any
) -> None:
    rt = runtimes(tmp_path, releases, telemetry_max_events=50)
    for i in range(200):
        rt.telemetry.record("install", outcome="refused", reason=f"r{i}")  # a contract-valid event
    stats = rt.telemetry.stats()
    assert stats == {"queued": 50, "dropped": 150, "failures": 0, "invalid": 0}
    newest = [int(e.payload["reason"][1:]) for e in rt.telemetry.pending(1000)]
    assert newest == list(range(150, 200))  # the newest kept
    assert rt.status()["telemetry"]["dropped"] == 150


def test_read_only_telemetry_never_raises_into_predict(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases)
    rt.telemetry._db.execute("PRAGMA query_only = ON")  # the database refuses every write from now on
    for _ in range(150):  # more than one aggregate flush (every 100 inferences)
        result = rt.predict(sample())
    assert rt.feedback(result.prediction_id, result.top_k[0][0]) is True
    rt.install(releases.bundles["1.1.0"])  # install telemetry fails too, the install does not
    serves(rt, "1.1.0")
    assert rt.telemetry.stats()["failures"] >= 3


def test_closed_telemetry_database_never_raises_into_predict_or_status(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases)
    rt.telemetry._db.close()
    for _ in range(120):
        rt.predict(sample())
    rt.install(releases.bundles["1.1.0"])
    serves(rt, "1.1.0")
    assert rt.telemetry.failures >= 2
    status = rt.status()
    assert status["active"]["version"] == "1.1.0"
    assert status["telemetry"]["failures"] >= 2


def test_corrupt_telemetry_database_does_not_stop_the_runtime(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    for leftover in store.glob("telemetry.db*"):
        leftover.unlink()
    (store / "telemetry.db").write_bytes(b"this is not an sqlite database" * 200)
    rt = runtimes(store, releases)
    serves(rt, "1.0.0")
    rt.telemetry.record("after", ok=True)
    assert rt.telemetry.stats()["queued"] >= 1


# ---- attack 11: a file swapped between verify and load ----------------------------------------------------


def test_swapped_model_file_is_refused_at_the_next_start(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["two"], tmp_path / "two")
    active = load_state(store / "state.json").active  # type: ignore[union-attr]
    assert active is not None and active.version == "1.1.0"
    swapped = (releases.folder / "tiny-1.2.0.onnx").read_bytes()  # a valid model, just not the signed one
    (store / "slots" / active.slot / "model.onnx").write_bytes(swapped)
    rt = runtimes(store, releases)
    status = rt.status()
    assert status["active"]["version"] == "1.0.0" and status["previous"] is None  # fell back
    serves(rt, "1.0.0")
    assert any(e["event"] == "slot-lost" for e in status["history"])
    assert events(rt, "slot-verify-failed")

    store = reset_store(templates["one"], tmp_path / "one")  # nothing to fall back to
    active = load_state(store / "state.json").active  # type: ignore[union-attr]
    (store / "slots" / active.slot / "model.onnx").write_bytes(swapped)  # type: ignore[union-attr]
    rt = runtimes(store, releases)
    assert rt.status()["active"] is None
    with pytest.raises(NoModelError):
        rt.predict(sample())
    rt.install(releases.bundles["1.1.0"])  # the device can still be repaired by an install
    serves(rt, "1.1.0")


@pytest.mark.parametrize("swap", ["same-size-model", "other-size-model", "labels", "preprocess"])
def test_file_swapped_after_verification_is_never_loaded(
    tmp_path: Path,
    releases: Releases,
    templates: dict[str, Path],
    runtimes: Any,
    monkeypatch: Any,
    swap: str,
) -> None:
    import device_runtime.engines as engines

    store = reset_store(templates["two"], tmp_path / "store")
    rt = runtimes(store, releases)
    serves(rt, "1.1.0")  # verified at start, loaded
    slot = store / "slots" / rt.status()["active"]["slot"]
    originals = {p.name: p.read_bytes() for p in slot.iterdir() if p.is_file()}
    if swap == "same-size-model":
        swapped = (releases.folder / "tiny-1.2.0.onnx").read_bytes()
        assert len(swapped) == len(originals["model.onnx"])
        (slot / "model.onnx").write_bytes(swapped)
    elif swap == "other-size-model":
        (slot / "model.onnx").write_bytes((releases.folder / f"tiny-{NOISY}.onnx").read_bytes())
    elif swap == "labels":
        (slot / "labels.txt").write_text("evil\nevil\nevil\nevil\n")
    else:
        spec = json.loads(originals["preprocess.json"])
        spec["inputs"][0]["name"] = "evil"
        (slot / "preprocess.json").write_text(json.dumps(spec))
    loaded_bytes: list[bytes] = []
    real_load = engines.load_engine

    def spy(model: Any, **kwargs: Any) -> Any:
        loaded_bytes.append(model)
        return real_load(model, **kwargs)

    monkeypatch.setattr(engines, "load_engine", spy)
    rt._loaded = None  # the next predict loads the slot again: the swap sits between verify and load
    with pytest.raises(VerificationError, match="changed"):
        rt.predict(sample())
    assert all(data == originals["model.onnx"] for data in loaded_bytes)
    for name, data in originals.items():  # put the signed bytes back: it serves again
        (slot / name).write_bytes(data)
    serves(rt, "1.1.0")


# ---- state.json lost or torn ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage", "wrong-schema", "bad-slot-name"])
def test_lost_or_torn_state_is_rebuilt_from_the_slots(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any, damage: str
) -> None:
    store = reset_store(templates["two"], tmp_path / "store")
    path = store / "state.json"
    data = path.read_bytes()
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff garbage \x13" * 10)
    elif damage == "wrong-schema":
        path.write_bytes(data.replace(b"edgekit.device-state/v1", b"edgekit.device-state/v0"))
    else:
        path.write_bytes(data.replace(b'"slot": "b"', b'"slot": "../../etc"'))
    rt = runtimes(store, releases)
    status = rt.status()
    assert status["active"]["version"] == "1.1.0" and status["previous"]["version"] == "1.0.0"
    assert any(e["event"] == "state-rebuilt" for e in status["history"])
    serves(rt, "1.1.0")
    assert load_state(path) is not None
    with pytest.raises(PolicyError, match="rollback"):  # the rebuilt state keeps the floor
        rt.install(releases.bundles["1.0.0"])
    serves(rt, "1.1.0")


def test_leftover_incoming_directory_is_removed_at_start(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    leftover = store / "slots" / ".incoming-deadbeef"
    shutil.copytree(store / "slots" / "a", leftover)
    rt = runtimes(store, releases)
    assert not leftover.exists()
    serves(rt, "1.0.0")


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage"])
def test_a_reverted_release_stays_reverted_when_state_json_is_lost(
    tmp_path: Path, releases: Releases, templates: dict[str, Path], runtimes: Any, damage: str
) -> None:
    store = reset_store(templates["one"], tmp_path / "store")
    rt = runtimes(store, releases)
    rt.install(releases.bundles["1.1.0"])
    assert rt.revert("bad") is True
    rt.close()
    path = store / "state.json"
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.write_bytes(b"\x00\xff garbage" * 9)
    rt = runtimes(store, releases)
    status = rt.status()
    assert status["active"]["version"] == "1.0.0" and status["previous"] is None
    assert releases.bundle_ids["1.1.0"] in status["bad_releases"]
    serves(rt, "1.0.0")
    with pytest.raises(InstallError) as refused:  # still refused as a reverted release
        rt.install(releases.bundles["1.1.0"])
    assert refused.value.reason == "previously-reverted"
