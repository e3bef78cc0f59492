"""Finding 9: a lost, truncated or garbage `state.json` must not bring back a release this device reverted.

Real processes, real crashes: the candidate 1.1.0 aborts inside its engine on three starts in a row (a real
SIGABRT, via the crash-safety zygote), the third start reverts it to 1.0.0; then `state.json` is damaged and
the next start must still serve 1.0.0 and refuse 1.1.0. The kill-point tests SIGKILL a real process at the
rename of the reverted-release journal and at the rename of the `state.json` that follows it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_runtime.errors import InstallError
from device_runtime.runtime import Runtime
from device_runtime.state import load_state
from tests.adversarial._device import device_fixtures, run_killed_at_rename
from tests.device_runtime.runtime_fixtures import Releases, Zygote, config, reset_store, sample

DAMAGE = ["deleted", "truncated", "garbage", "empty"]
releases, committed_template = device_fixtures()


def load_reverted(path: Path) -> tuple[str, ...]:
    """The bundle ids the reverted-release journal holds (() when absent or unreadable)."""
    try:
        return tuple(json.loads(path.read_bytes())["reverted"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory, releases: Releases) -> Iterator[Zygote]:
    forker = Zygote(tmp_path_factory.mktemp("zygote"), releases)
    yield forker
    forker.close()


def damage_state(store: Path, how: str) -> None:
    path = store / "state.json"
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(b"\x00\xfe not json \x13" * 20)
    else:
        path.write_bytes(b"")


def crash_three_times(zygote: Zygote, store: Path, tmp_path: Path, releases: Releases) -> None:
    """Install 1.1.0 and abort inside its engine on each start until the runtime reverts it."""
    out, ready = tmp_path / "out.json", tmp_path / "ready"
    for start in range(1, 5):
        request: dict[str, Any] = {"bad_version": "1.1.0", "mode": "abort", "out": out, "ready": ready}
        if start == 1:
            request["bundle"] = releases.bundles["1.1.0"]
        result = zygote.run("start", store, trial_inferences=100, **request)
        if start <= 3:
            assert result.signal == signal.SIGABRT, f"start {start}: {result}\n{zygote.log_tail()}"
        else:
            assert result.exit == 0, zygote.log_tail()
    assert json.loads(out.read_text())["version"] == "1.0.0"


def assert_reverted_stays_reverted(store: Path, releases: Releases) -> None:
    rt = Runtime(config(store, releases))
    try:
        status = rt.status()
        assert status["active"]["version"] == "1.0.0", status["active"]
        assert status["previous"] is None and status["trial"] is None
        assert releases.bundle_ids["1.1.0"] in status["bad_releases"]
        result = rt.predict(sample())
        assert result.version == "1.0.0"
        with pytest.raises(InstallError) as refused:
            rt.install(releases.bundles["1.1.0"])
        assert refused.value.reason == "previously-reverted"
        assert rt.predict(sample()).version == "1.0.0"
    finally:
        rt.close()
    on_disk = load_state(store / "state.json")
    assert on_disk is not None and on_disk.active is not None and on_disk.active.version == "1.0.0"
    assert releases.bundle_ids["1.1.0"] in load_reverted(store / "reverted.json")


@pytest.mark.parametrize("how", DAMAGE)
def test_a_release_reverted_after_three_real_crashes_stays_reverted_when_state_json_is_damaged(
    tmp_path: Path,
    releases: Releases,
    zygote: Zygote,
    committed_template: Path,
    how: str,
) -> None:
    store = reset_store(committed_template, tmp_path / "store")
    crash_three_times(zygote, store, tmp_path, releases)
    damage_state(store, how)
    assert_reverted_stays_reverted(store, releases)
    damage_state(store, how)  # and again: the rebuilt state keeps the fact
    assert_reverted_stays_reverted(store, releases)


@pytest.mark.parametrize("how", DAMAGE)
def test_a_manual_revert_stays_reverted_when_state_json_is_damaged(
    tmp_path: Path,
    releases: Releases,
    committed_template: Path,
    how: str,
) -> None:
    store = reset_store(committed_template, tmp_path / "store")
    rt = Runtime(config(store, releases))
    rt.install(releases.bundles["1.1.0"])
    assert rt.revert("misbehaved here") is True
    rt.close()
    damage_state(store, how)
    assert_reverted_stays_reverted(store, releases)


def test_a_lost_journal_is_rewritten_from_state_json(
    tmp_path: Path,
    releases: Releases,
    committed_template: Path,
) -> None:
    """Each record repairs the other: a garbage journal is rebuilt from state.json at the next start."""
    store = reset_store(committed_template, tmp_path / "store")
    rt = Runtime(config(store, releases))
    rt.install(releases.bundles["1.1.0"])
    rt.revert("misbehaved here")
    rt.close()
    (store / "reverted.json").write_bytes(b"\xff garbage")
    Runtime(config(store, releases)).close()
    assert releases.bundle_ids["1.1.0"] in load_reverted(store / "reverted.json")
    damage_state(store, "deleted")  # now losing state.json is harmless again
    assert_reverted_stays_reverted(store, releases)


def test_killed_between_the_journal_and_state_json_a_manual_revert_still_happens(
    tmp_path: Path,
    releases: Releases,
    committed_template: Path,
) -> None:
    """The journal is renamed into place, then the process dies before state.json records the revert:
    state.json still says 1.1.0 on trial, the journal says reverted; the next start reverts."""
    store = reset_store(committed_template, tmp_path / "store")
    code = run_killed_at_rename(
        tmp_path, releases, store, op="revert", bundle=releases.bundles["1.1.0"], kill_on="state.json"
    )
    assert code == -signal.SIGKILL
    on_disk = load_state(store / "state.json")
    assert on_disk is not None and on_disk.active is not None
    assert on_disk.active.version == "1.1.0" and on_disk.trial is not None  # state.json never saw the revert
    assert releases.bundle_ids["1.1.0"] in load_reverted(store / "reverted.json")
    assert_reverted_stays_reverted(store, releases)


def test_killed_before_the_journal_rename_the_revert_never_happened(
    tmp_path: Path,
    releases: Releases,
    committed_template: Path,
) -> None:
    """Killed with the journal's temp file written but not renamed: neither record has the revert, so the
    candidate is still on trial (the revert() call never returned); the store is consistent and serves."""
    store = reset_store(committed_template, tmp_path / "store")
    code = run_killed_at_rename(
        tmp_path, releases, store, op="revert", bundle=releases.bundles["1.1.0"], kill_on="reverted.json"
    )
    assert code == -signal.SIGKILL
    assert load_reverted(store / "reverted.json") == ()
    rt = Runtime(config(store, releases))
    try:
        status = rt.status()
        assert status["active"]["version"] == "1.1.0" and status["trial"] is not None
        assert status["previous"]["version"] == "1.0.0"
        assert rt.revert("misbehaved here") is True  # the revert, done again, now sticks
    finally:
        rt.close()
    damage_state(store, "deleted")
    assert_reverted_stays_reverted(store, releases)


def test_killed_between_journal_and_state_json_on_the_third_strike_the_revert_happens(
    tmp_path: Path,
    releases: Releases,
    zygote: Zygote,
    committed_template: Path,
) -> None:
    """Two real crashes, then the third start's recovery strikes a third time and reverts: killed at the
    state.json rename after the journal's, the next start still serves 1.0.0 (even with state.json lost)."""
    store = reset_store(committed_template, tmp_path / "store")
    out, ready = tmp_path / "out.json", tmp_path / "ready"
    for start in range(1, 4):
        request: dict[str, Any] = {"bad_version": "1.1.0", "mode": "abort", "out": out, "ready": ready}
        if start == 1:
            request["bundle"] = releases.bundles["1.1.0"]
        result = zygote.run("start", store, trial_inferences=100, **request)
        assert result.signal == signal.SIGABRT, zygote.log_tail()
    on_disk = load_state(store / "state.json")
    assert on_disk is not None and on_disk.trial is not None and on_disk.trial.strikes == 2
    code = run_killed_at_rename(tmp_path, releases, store, op="start", kill_on="state.json")
    assert code == -signal.SIGKILL
    on_disk = load_state(store / "state.json")
    assert on_disk is not None and on_disk.active is not None and on_disk.active.version == "1.1.0"
    damage_state(store, "deleted")
    assert_reverted_stays_reverted(store, releases)
