"""Crash safety of the device runtime with real processes: SIGKILL at random instants, real SIGSEGV/abort in
an inference, hangs ended by a watchdog, power loss between writing and renaming state.json (attack 28).

Children are forked from a zygote interpreter that imported the runtime once (`runtime_fixtures.Zygote`):
each child is its own process with its own Runtime, and its only link to the test is the store on disk. After
every death the test starts a Runtime on that store and checks it recovers to a verified model that serves
(`runtime_fixtures.check_store`). `python -m bench.soak_runtime` runs the kill loop for longer.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_runtime.runtime import Runtime
from device_runtime.state import load_state
from tests.device_runtime.runtime_fixtures import (
    Releases,
    Zygote,
    build_releases,
    check_store,
    config,
    kill_loop,
    make_store,
    reset_store,
    trial_events,
)

# Randomized kills in the default run (about 0.1 s each on a 2-core host, ~25 s in all).
KILL_TRIALS = {"install-next": 90, "install-reusing-previous-slot": 90, "trial-inferences": 60}
SEED = 20250101


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Any:
    forker = Zygote(tmp_path_factory.mktemp("zygote"), releases)
    yield forker
    forker.close()


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Path:
    """A store with 1.0.0 installed and committed."""
    return make_store(tmp_path_factory.mktemp("committed") / "store", releases, ["1.0.0"])


@pytest.mark.slow
def test_random_sigkill_during_install_and_trial_always_leaves_a_verified_model(
    tmp_path: Path, releases: Releases, zygote: Zygote
) -> None:
    stats = kill_loop(tmp_path, releases, zygote, KILL_TRIALS, SEED, stop_on_failure=True)
    assert not stats.failures, "\n\n".join(stats.failures[:3])
    assert stats.trials == sum(KILL_TRIALS.values()) + stats.extra
    assert stats.killed >= stats.trials // 2  # most kills land inside the scenario, not after it
    # kills landed both before the swap (old version) and after it (new version) of each install group
    assert {"1.0.0", "1.1.0", "1.2.0"} <= set(stats.versions)
    durations = {k: round(v, 3) for k, v in stats.durations.items()}
    print(
        f"\n{stats.trials} kill trials in {stats.seconds:.1f} s ({stats.trials / stats.seconds:.1f}/s): "
        f"killed {stats.killed} ({stats.extra} extra), finished {stats.finished}, serving {stats.versions}, "
        f"scenario durations {durations}"
    )


def _start(zygote: Zygote, store: Path, tmp_path: Path, mode: str, **args: Any) -> Any:
    out, ready = tmp_path / "out.json", tmp_path / "ready"
    out.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    request: dict[str, Any] = {
        "bad_version": "1.1.0",
        "mode": mode,
        "out": out,
        "ready": ready,
        "trial_inferences": 100,
    }
    request.update(args)
    if mode == "hang":  # a watchdog: kill the process 0.2 s after it entered the engine
        return zygote.run("start", store, kill_when=ready, watchdog=0.2, **request)
    return zygote.run("start", store, **request)


@pytest.mark.parametrize(
    ("mode", "died_by"),
    [("segv", signal.SIGSEGV), ("abort", signal.SIGABRT), ("hang", signal.SIGKILL)],
)
def test_crashing_candidate_is_reverted_after_three_starts(
    tmp_path: Path,
    releases: Releases,
    zygote: Zygote,
    committed: Path,
    mode: str,
    died_by: int,
) -> None:
    """Each start: Runtime(...), (first start only: install 1.1.0), predict once. The candidate's engine
    dies for real (SIGSEGV in ctypes, abort, or a hang ended by SIGKILL); the in-flight marker turns each
    death into a strike at the next start, and the third strike reverts without any network."""
    store = reset_store(committed, tmp_path / "store")
    results = []
    for start in range(1, 7):
        bundle = {"bundle": releases.bundles["1.1.0"]} if start == 1 else {}
        result = _start(zygote, store, tmp_path, mode, **bundle)
        results.append(result)
        if result.exit == 0:
            break
        assert result.signal == died_by, f"start {start}: {result}\n{zygote.log_tail()}"
        on_disk = load_state(store / "state.json")
        assert on_disk is not None and on_disk.active is not None and on_disk.trial is not None
        assert on_disk.active.version == "1.1.0" and on_disk.trial.strikes == start - 1
        assert (store / "inflight").exists()  # the death is on record
    crashes = [r for r in results if r.signal is not None]
    assert len(crashes) == 3, results
    assert results[-1].exit == 0, zygote.log_tail()
    assert json.loads((tmp_path / "out.json").read_text())["version"] == "1.0.0"  # the 4th start served 1.0.0

    fifth = _start(zygote, store, tmp_path, mode)
    assert fifth.exit == 0 and json.loads((tmp_path / "out.json").read_text())["version"] == "1.0.0"

    rt = Runtime(config(store, releases))
    try:
        status = rt.status()
        assert status["active"]["version"] == "1.0.0" and status["trial"] is None
        assert releases.bundle_ids["1.1.0"] in status["bad_releases"]
        reverted = trial_events(rt, "reverted")
        assert len(reverted) == 1, reverted
        assert reverted[0]["version"] == "1.1.0" and reverted[0]["strikes"] == 3
        assert all(reason.startswith("crash") for reason in reverted[0]["reasons"])
        assert len([e for e in rt.telemetry.pending(10_000) if e.kind == "crash"]) == 3
    finally:
        rt.close()
    assert check_store(store, releases, {"1.0.0"}) == "1.0.0"


@pytest.mark.parametrize(
    ("nth", "survivor"),
    [(1, "1.0.0"), (2, "1.1.0"), (4, "1.1.0")],
    ids=["activation-swap", "first-trial-success", "commit"],
)
def test_power_loss_between_writing_and_renaming_state_keeps_the_old_state(
    tmp_path: Path, releases: Releases, zygote: Zygote, committed: Path, nth: int, survivor: str
) -> None:
    """Attack 28: the child writes .state.json.<random>.tmp (fsynced) and dies by SIGKILL before the rename,
    on the nth rename of state.json after start-up: 1 = the activation of 1.1.0, 2 = its first trial success,
    4 = its commit (trial_inferences=3). A restart finds exactly the state before that write."""
    store = reset_store(committed, tmp_path / "store")
    start = zygote.run(
        "start", store, bundle=releases.bundles["1.1.0"], trial_inferences=3, out=tmp_path / "ignored"
    )
    assert start.exit == 0  # sanity: the same install without power loss works (then reset)
    store = reset_store(committed, tmp_path / "store")
    before = (store / "state.json").read_bytes()
    died = zygote.run(
        "power_loss", store, bundle=releases.bundles["1.1.0"], nth=nth, count=3, trial_inferences=3
    )
    assert died.signal == signal.SIGKILL, zygote.log_tail()
    (temp,) = store.glob(".state.json.*.tmp")  # signing.atomic's unique temporary name
    pending = load_state(temp)
    old = load_state(store / "state.json")
    assert pending is not None and old is not None  # the new state was written in full, never renamed
    assert pending != old
    if nth == 1:
        assert (store / "state.json").read_bytes() == before
        assert old.active is not None and old.active.version == "1.0.0" and old.trial is None
    else:
        assert old.active is not None and old.active.version == "1.1.0" and old.trial is not None
        assert old.trial.successes == nth - 2 and old.floors.get("tiny") == 1  # not committed
    assert check_store(store, releases, {survivor}) == survivor

    rt = Runtime(config(store, releases, trial_inferences=1))  # the device carries on from there
    try:
        if survivor == "1.0.0":
            assert rt.install(releases.bundles["1.1.0"]).version == "1.1.0"
        rt.predict(np.zeros((1, 8), np.float32))
        assert rt.status()["active"]["version"] == "1.1.0" and rt.status()["trial"] is None
    finally:
        rt.close()
