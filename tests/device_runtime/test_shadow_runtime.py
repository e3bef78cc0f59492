"""Shadow trials in a real Runtime: real signed bundles, real onnxruntime, a real background worker.

The served prediction is compared bit for bit with shadowing on and off; failures, hangs and the CPU budget
are played by real models (a bundle whose input does not fit) or by wrappers around the real engine (a run
that waits on an event, a run that sleeps). A native crash is a real SIGSEGV in a child process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_runtime.errors import InstallError
from device_runtime.runtime import Runtime
from device_runtime.shadow import ShadowRunner, ShadowSettings, sampled
from device_runtime.telemetry_contract import ShadowPayload, parse_payload
from tests.device_runtime.runtime_fixtures import (
    ROOT,
    Releases,
    build_releases,
    config,
    expected_logits,
    sample,
)
from tests.device_runtime.shadow_fixtures import (
    SWAPPED,
    WIDE,
    BlockingEngine,
    SlowEngine,
    build_shadow_bundles,
)

INPUTS = [sample(seed=seed) for seed in range(120)]


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="module")
def shadow_bundles(releases: Releases) -> dict[str, tuple[Path, str]]:
    return build_shadow_bundles(releases)


@pytest.fixture
def make_runtime(tmp_path: Path, releases: Releases) -> Iterator[Callable[..., Runtime]]:
    opened: list[Runtime] = []

    def make(name: str = "store", **overrides: Any) -> Runtime:
        rt = Runtime(config(tmp_path / name, releases, **overrides))
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.close()


def wait_for(condition: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll until `condition` holds (a liveness bound, not a timing threshold: it fails only if never)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def running(rt: Runtime) -> dict[str, Any]:
    status = rt.status()["shadow"]["running"]
    assert status is not None, rt.status()["shadow"]
    return dict(status)


def shadow_events(rt: Runtime) -> list[ShadowPayload]:
    rt.flush_shadow()
    parsed = [parse_payload("shadow", e.payload) for e in rt.telemetry.pending(100_000) if e.kind == "shadow"]
    assert all(isinstance(p, ShadowPayload) for p in parsed)
    return parsed  # type: ignore[return-value]


def served(rt: Runtime, inputs: list[np.ndarray]) -> list[tuple[Any, ...]]:
    results = []
    for x in inputs:
        r = rt.predict(x)
        results.append((r.outputs["logits"].tobytes(), r.top_k, r.top_index, r.version, r.bundle_id))
    return results


def test_a_shadow_never_changes_a_served_prediction_even_when_it_disagrees_everywhere(
    make_runtime: Callable[..., Runtime], releases: Releases, shadow_bundles: dict[str, tuple[Path, str]]
) -> None:
    plain = make_runtime("plain")
    shadowed = make_runtime("shadowed")
    for rt in (plain, shadowed):
        rt.install(releases.bundles["1.0.0"])
    swapped, swapped_id = shadow_bundles[SWAPPED]
    staged = shadowed.stage_shadow(swapped, sample=1.0, max_cpu=1.0)
    assert not staged.already_active and staged.slot == "b" and staged.bundle_id == swapped_id
    status = shadowed.status()
    assert status["active"]["version"] == "1.0.0" and status["shadow"]["staged"]["bundle_id"] == swapped_id
    assert served(shadowed, INPUTS) == served(plain, INPUTS)
    wait_for(lambda: running(shadowed)["pending"] == 0, "the shadow worker drained its queue")
    totals = running(shadowed)
    assert totals["compared"] > 0 and totals["agreed"] == 0, totals  # it disagrees on every input it ran
    assert totals["compared"] + totals["dropped"] + totals["skipped_cpu"] == len(INPUTS)
    for x in INPUTS[:5]:  # still serving 1.0.0's own numbers
        np.testing.assert_allclose(shadowed.predict(x).outputs["logits"], expected_logits("1.0.0", x), 1e-5)
    # Those predictions were offered to the shadow too: let its runs finish before the windows are counted.
    wait_for(lambda: running(shadowed)["pending"] == 0, "the shadow worker drained its queue again")
    events = shadow_events(shadowed)
    assert events and {e.bundle_id for e in events} == {swapped_id}
    assert {e.served_bundle_id for e in events} == {releases.bundle_ids["1.0.0"]}
    assert sum(e.compared for e in events) == running(shadowed)["compared"]
    assert sum(e.agreed for e in events) == 0
    assert {o.role for e in events for o in e.outputs} == {"classification"}  # [1, C]: read as predict does


def test_a_self_shadow_agrees_with_itself_and_installs_nothing(
    make_runtime: Callable[..., Runtime], releases: Releases, tmp_path: Path
) -> None:
    rt = make_runtime()
    rt.install(releases.bundles["1.0.0"])
    result = rt.stage_shadow(releases.bundles["1.0.0"], sample=1.0, max_cpu=1.0)
    assert result.already_active and rt.status()["shadow"]["staged"] is None
    assert sorted(p.name for p in (tmp_path / "store" / "slots").iterdir()) == ["a"]
    served(rt, INPUTS[:40])
    wait_for(lambda: running(rt)["pending"] == 0, "the shadow worker drained its queue")
    totals = running(rt)
    assert totals["compared"] > 0 and totals["agreed"] == totals["compared"], totals
    events = shadow_events(rt)
    assert all(e.bundle_id == e.served_bundle_id == releases.bundle_ids["1.0.0"] for e in events)
    assert sum(e.compared for e in events) == sum(e.agreed for e in events) > 0
    assert rt.shadow(releases.bundle_ids["1.0.0"], sample=0.5, max_cpu=0.5)  # same runner, new share
    assert running(rt)["sample"] == 0.5


def test_a_shadow_that_raises_is_struck_out_and_the_app_never_notices(
    make_runtime: Callable[..., Runtime], releases: Releases, shadow_bundles: dict[str, tuple[Path, str]]
) -> None:
    rt = make_runtime(max_shadow_strikes=3, trial_inferences=100_000)  # the active model stays in trial
    rt.install(releases.bundles["1.0.0"])
    wide, wide_id = shadow_bundles[WIDE]
    rt.stage_shadow(wide, sample=1.0, max_cpu=1.0)  # its own golden vectors pass: it installs
    for index in range(10_000):  # until struck out (runs are admitted as the CPU budget allows)
        x = INPUTS[index % len(INPUTS)]
        result = rt.predict(x)  # every shadow run raises (x is [1, 8]; the wide model takes [1, 16])
        np.testing.assert_allclose(result.outputs["logits"], expected_logits("1.0.0", x), 1e-5)
        if running(rt)["stopped"]:
            break
        wait_for(lambda: running(rt)["pending"] == 0, "the shadow run finished")
    totals = running(rt)
    assert totals["stopped"] and (totals["failures"], totals["strikes"], totals["compared"]) == (3, 3, 0)
    assert rt.status()["shadow"]["struck"] == [wide_id]
    assert rt.status()["active"]["version"] == "1.0.0" and rt.status()["trial"]["strikes"] == 0
    events = shadow_events(rt)
    assert sum(e.failures for e in events) == 3 and events[-1].stopped
    assert not rt.shadow(wide_id)  # given up: it is not run again
    with pytest.raises(InstallError) as caught:
        rt.stage_shadow(wide)
    assert caught.value.reason == "shadow-struck"
    rt.close()
    again = make_runtime(max_shadow_strikes=3)  # the strikes survive a restart
    assert again.status()["shadow"]["struck"] == [wide_id] and not again.shadow(wide_id)


def test_a_hanging_shadow_times_out_without_ever_blocking_predict(
    make_runtime: Callable[..., Runtime], releases: Releases, shadow_bundles: dict[str, tuple[Path, str]]
) -> None:
    rt = make_runtime(shadow_deadline_seconds=0.05, max_shadow_strikes=2)
    rt.install(releases.bundles["1.0.0"])
    rt.stage_shadow(shadow_bundles[SWAPPED][0], sample=1.0, max_cpu=1.0)
    hang = BlockingEngine(rt._shadow.engine)
    rt._shadow.engine = hang  # every run from now on hangs until the test releases it
    try:
        first = rt.predict(INPUTS[0])
        wait_for(hang.entered.is_set, "the shadow run started")
        # predict returned while the shadow run it handed off is stuck: it never waits for it
        for x in INPUTS[1:20]:
            result = rt.predict(x)
            np.testing.assert_allclose(result.outputs["logits"], expected_logits("1.0.0", x), 1e-5)
        np.testing.assert_allclose(first.outputs["logits"], expected_logits("1.0.0", INPUTS[0]), 1e-5)
        # Each predict checks the deadline; after a timeout the next run waits until the CPU budget has
        # room again (the timed-out run counts its whole deadline), then hangs and times out too.
        deadline = time.monotonic() + 120
        while not running(rt)["stopped"]:
            assert time.monotonic() < deadline, running(rt)
            result = rt.predict(INPUTS[1])
            np.testing.assert_allclose(result.outputs["logits"], expected_logits("1.0.0", INPUTS[1]), 1e-5)
    finally:
        hang.release.set()
    totals = running(rt)
    assert totals["timeouts"] == 2 and totals["stopped"] and totals["compared"] == 0, totals
    assert rt.status()["shadow"]["strikes"] == {shadow_bundles[SWAPPED][1]: 2}
    events = shadow_events(rt)
    assert sum(e.timeouts for e in events) == 2 and events[-1].stopped
    time.sleep(0.1)  # the released runs finish; their late results are discarded
    assert running(rt)["compared"] == 0


def test_a_shadow_never_takes_the_fallback_of_a_model_in_trial(
    make_runtime: Callable[..., Runtime], releases: Releases, shadow_bundles: dict[str, tuple[Path, str]]
) -> None:
    rt = make_runtime(trial_inferences=1)
    rt.install(releases.bundles["1.0.0"])
    rt.predict(INPUTS[0])  # committed
    rt.close()
    rt = make_runtime(trial_inferences=100_000)
    rt.install(releases.bundles["1.1.0"])  # in trial; 1.0.0 in the other slot is its fallback
    with pytest.raises(InstallError) as caught:
        rt.stage_shadow(shadow_bundles[SWAPPED][0])
    assert caught.value.reason == "in-trial"
    status = rt.status()
    assert (status["active"]["version"], status["previous"]["version"]) == ("1.1.0", "1.0.0")
    assert status["shadow"]["staged"] is None and status["shadow"]["running"] is None
    assert rt.stage_shadow(releases.bundles["1.1.0"]).already_active  # a self-shadow needs no slot
    assert rt.revert("test") and rt.status()["active"]["version"] == "1.0.0"  # the fallback is intact


def test_a_lost_state_never_makes_the_staged_shadow_the_served_model(
    make_runtime: Callable[..., Runtime],
    releases: Releases,
    shadow_bundles: dict[str, tuple[Path, str]],
    tmp_path: Path,
) -> None:
    rt = make_runtime()
    rt.install(releases.bundles["1.0.0"])
    rt.stage_shadow(shadow_bundles[SWAPPED][0])  # counter 4: newer than the active 1.0.0
    rt.close()
    store = tmp_path / "store"
    (store / "state.json").unlink()  # lost: the state is rebuilt from the slots that verify
    again = make_runtime()
    status = again.status()
    assert status["active"]["version"] == "1.0.0" and status["shadow"]["staged"] is None
    assert not (store / "slots" / "b").exists()
    np.testing.assert_allclose(
        again.predict(INPUTS[0]).outputs["logits"], expected_logits("1.0.0", INPUTS[0]), 1e-5
    )


def test_the_cpu_budget_bounds_the_shadow_share_and_counts_what_it_skips(
    make_runtime: Callable[..., Runtime], releases: Releases
) -> None:
    from device_runtime.engines import load_engine

    rt = make_runtime()
    rt.install(releases.bundles["1.0.0"])
    spec = rt._ensure_loaded().spec
    engine = load_engine(releases.folder / "tiny-1.0.0.onnx", threads=1)
    slow = SlowEngine(load_engine(releases.folder / "tiny-1.0.0.onnx", threads=1), 0.01)  # >= 10 ms a run
    runner = ShadowRunner(
        slow,
        spec,
        bundle_id="b" * 64,
        version="1.0.0",
        served_bundle_id="a" * 64,
        settings=ShadowSettings(sample=1.0, max_cpu=0.5),
        min_sqnr_db=30.0,
        deadline_s=30.0,
        max_strikes=3,
    )
    try:
        offered = 200
        for index in range(offered):
            x = INPUTS[index % len(INPUTS)]
            runner.offer({"x": x}, dict(engine.run({"x": x})), spec, 1.0)  # the served run "took" 1 ms
            wait_for(lambda: runner.status()["pending"] == 0, "the shadow run finished")
        totals = runner.status()
        # Each run takes >= 10 ms and is admitted only while the shadow's time stays within 0.5 x the
        # served 200 ms: at most 0.5 * 200 / 10 runs, plus the one that may overshoot.
        assert 0 < totals["compared"] <= 0.5 * offered / 10 + 1, totals
        assert totals["skipped_cpu"] == offered - totals["compared"] and totals["dropped"] == 0
        assert totals["agreed"] == totals["compared"]
        payload = runner.drain(time.time())
        assert payload is not None and payload["skipped_cpu"] == totals["skipped_cpu"]
        assert isinstance(parse_payload("shadow", payload), ShadowPayload)
    finally:
        runner.close()


def test_sampling_takes_an_even_deterministic_share() -> None:
    for share in (0.1, 0.25, 1 / 3, 1.0):
        taken = [k for k in range(1, 1001) if sampled(k, share)]
        assert len(taken) == int(1000 * share + 1e-9)
        assert taken == [k for k in range(1, 1001) if sampled(k, share)]  # no random state


def test_a_crash_during_a_shadow_run_is_charged_to_the_shadow_after_restart(
    tmp_path: Path, releases: Releases, shadow_bundles: dict[str, tuple[Path, str]]
) -> None:
    """A child process dies of SIGSEGV inside the shadow engine while its active model is in trial; the
    restarted runtime records the crash against the shadow bundle and gives the trial no strike."""
    store = tmp_path / "store"
    swapped, swapped_id = shadow_bundles[SWAPPED]
    child = CHILD.format(
        store=str(store),
        public_key=str(releases.public_key),
        bundle=str(releases.bundles["1.0.0"]),
        shadow=str(swapped),
    )
    done = subprocess.run(
        [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == -11, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "predicting" in done.stdout
    assert list(store.glob("shadow-inflight-*")), "the child died with a shadow run in flight"
    rt = Runtime(config(store, releases, trial_inferences=1000))
    try:
        status = rt.status()
        assert status["active"]["version"] == "1.0.0" and status["trial"]["strikes"] == 0
        assert status["shadow"]["strikes"] == {swapped_id: 1}
        assert status["shadow"]["staged"]["bundle_id"] == swapped_id
        crashes = [e.payload for e in rt.telemetry.pending(1000) if e.kind == "crash"]
        assert crashes == [{"bundle_id": swapped_id, "during": "shadow"}]
        assert not list(store.glob("shadow-inflight-*")) and not (store / "inflight").exists()
        assert rt.shadow(swapped_id, sample=1.0, max_cpu=1.0)  # one strike of three: shadowed again
        assert running(rt)["strikes"] == 1
        np.testing.assert_allclose(
            rt.predict(INPUTS[0]).outputs["logits"], expected_logits("1.0.0", INPUTS[0])
        )
    finally:
        rt.close()


CHILD = """
import sys
from pathlib import Path
from device_runtime.config import RuntimeConfig
from device_runtime.runtime import Runtime
from tests.device_runtime.runtime_fixtures import sample
from tests.device_runtime.shadow_fixtures import CrashingEngine

rt = Runtime(RuntimeConfig(
    store_dir=Path({store!r}), trusted_keys=[Path({public_key!r})], device_id="device-1",
    hardware_id="rpi4", trial_inferences=1000, trial_seconds=0.0, engine_threads=1,
))
rt.install({bundle!r})
rt.stage_shadow({shadow!r}, sample=1.0, max_cpu=1.0)
rt._shadow.engine = CrashingEngine()
print("predicting", flush=True)
for seed in range(100000):
    rt.predict(sample(seed=seed))
print("survived", flush=True)
"""
