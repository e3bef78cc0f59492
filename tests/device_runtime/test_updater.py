"""`device_runtime.updater`: cohorts (pure) and the TUF update loop against a real loopback repository.

Everything on the wire is real: `TufRepository` writes the metadata, `RepoServer` (ThreadingHTTPServer on
127.0.0.1) serves it, the real ngclient with `BoundedFetcher` downloads it, and a real `Runtime` verifies,
self-tests and installs the bundles. Attacks are played by changing what the server serves.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from tuf.ngclient import Updater as NgUpdater

from device_runtime.rollout_plan import Decision, PlanError, cohort_u, decide, parse_plan
from device_runtime.runtime import Runtime
from device_runtime.updater import MetadataError, TransportError, Updater, UpdaterConfig
from edgekit.server.tuf_repo import TufRepository
from tests.device_runtime.runtime_fixtures import Releases, build_releases, config
from tests.server.tuf_fixtures import RepoServer, make_plan, plant_plan, served_path

DEVICE_IDS = [f"device-{i:05d}" for i in range(2000)]


# ---- cohorts: pure ----------------------------------------------------------------------------------------
def test_cohort_u_is_the_documented_hash() -> None:
    digest = hashlib.sha256(b"salt-1" + b"device-1").digest()
    assert cohort_u("salt-1", "device-1") == int.from_bytes(digest[:8], "big") / 2**64
    assert (
        cohort_u("sälz", "gerät")
        == int.from_bytes(hashlib.sha256("sälzgerät".encode()).digest()[:8], "big") / 2**64
    )
    assert 0 <= cohort_u("a", "b") < 1


def _decisions(plan: dict[str, Any]) -> dict[str, Decision]:
    parsed = parse_plan(plan)
    return {d: decide(parsed, d) for d in DEVICE_IDS}


def test_stage_one_percent_holds_exactly_the_devices_below_u_001() -> None:
    decisions = _decisions(make_plan(stage_index=0))
    treated = {d for d, x in decisions.items() if x.arm == "treatment"}
    assert treated == {d for d in DEVICE_IDS if cohort_u("salt-1", d) < 0.01}
    assert all(decisions[d].wanted.version == "1.1.0" for d in treated)  # type: ignore[union-attr]
    assert all(x.wanted.version == "1.0.0" for d, x in decisions.items() if d not in treated)  # type: ignore[union-attr]
    # binomial(2000, 0.01): mean 20, sd 4.4
    assert abs(len(treated) - 20) <= 4 * math.sqrt(2000 * 0.01 * 0.99)


def test_stages_are_nested_sticky_and_the_control_group_is_disjoint_and_as_large() -> None:
    groups: list[set[str]] = []
    for index, percent in enumerate((1, 5, 25)):
        decisions = _decisions(make_plan(stage_index=index))
        treated = {d for d, x in decisions.items() if x.arm == "treatment"}
        control = {d for d, x in decisions.items() if x.arm == "control"}
        assert not treated & control
        assert all(decisions[d].wanted.version == "1.0.0" for d in control)  # type: ignore[union-attr]
        n, p = len(DEVICE_IDS), percent / 100
        sd = math.sqrt(n * p * (1 - p))
        assert abs(len(treated) - n * p) <= 4 * sd and abs(len(control) - n * p) <= 4 * sd
        assert abs(len(treated) - len(control)) <= 4 * math.sqrt(2) * sd
        # sticky: pausing, re-deciding or restarting changes nothing
        paused = _decisions(make_plan("paused", stage_index=index))
        assert {d for d, x in paused.items() if x.arm == "treatment"} == treated
        assert _decisions(make_plan(stage_index=index)) == decisions
        groups.append(treated)
    assert groups[0] < groups[1] < groups[2]
    # another salt: another, independent sample
    other = _decisions(make_plan(stage_index=2, salt="salt-2"))
    assert {d for d, x in other.items() if x.arm == "treatment"} != groups[2]


@pytest.mark.parametrize("state", ["halted", "rolled_back"])
def test_halted_or_rolled_back_plan_sends_everyone_to_the_baseline(state: str) -> None:
    decisions = _decisions(make_plan(state, stage_index=2))
    assert {x.wanted.version for x in decisions.values()} == {"1.0.0"}  # type: ignore[union-attr]
    assert any(x.arm == "treatment" for x in decisions.values())  # the cohort is still reported


def test_complete_plan_sends_everyone_to_the_target() -> None:
    decisions = _decisions(make_plan("complete", stage_index=3))
    assert {x.wanted.version for x in decisions.values()} == {"1.1.0"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"state": "launched"}, "plan-format", id="unknown-state"),
        pytest.param({"stage_index": 4}, "plan-format", id="stage-out-of-range"),
        pytest.param({"salt": ""}, "plan-format", id="empty-salt"),
        pytest.param({"model": "other"}, "wrong-model", id="other-model"),
        pytest.param({"channel": "beta"}, "wrong-channel", id="other-channel"),
        pytest.param({"stages": [1.0, 5, 25, 100]}, "plan-format", id="float-stage"),
        pytest.param({"stages": [1, 5, 25]}, "plan-format", id="no-100"),
        pytest.param({"baseline": None}, "plan-format", id="running-without-baseline"),
        pytest.param({"extra": 1}, "plan-format", id="unknown-key"),
        pytest.param(
            {"target": {**make_plan()["target"], "target_path": "/etc/passwd"}},
            "unsafe-target-path",
            id="absolute-path",
        ),
        pytest.param(
            {"target": {**make_plan()["target"], "target_path": "bundles/other/other-1.1.0.ekb"}},
            "unsafe-target-path",
            id="another-models-bundle",
        ),
    ],
)
def test_malformed_plans_are_refused(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(PlanError) as caught:
        parse_plan(json.dumps({**make_plan(), **change}).encode(), model="tiny", channel="stable")
    assert caught.value.reason == reason
    with pytest.raises(PlanError):
        parse_plan(b'{"model": "tiny", "model": "tiny"}')  # duplicate keys: strict JSON


# ---- the loop over a real repository -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    return build_releases(tmp_path_factory.mktemp("releases"))


@dataclass
class World:
    repo: TufRepository
    server: RepoServer
    offline: Path
    bootstrap: bytes
    folder: Path

    def config(self, **overrides: Any) -> UpdaterConfig:
        options: dict[str, Any] = {
            "metadata_url": self.server.metadata_url,
            "targets_url": self.server.targets_url,
            "metadata_dir": self.folder / "device" / "tuf",
            "download_dir": self.folder / "device" / "downloads",
            "model": "tiny",
            "channel": "stable",
            "device_id": "device-1",
            "bootstrap_root": self.bootstrap,
            "timeout_s": 10.0,
            "min_speed_bytes_per_s": 1,
            "speed_grace_s": 5.0,
        }
        options.update(overrides)
        return UpdaterConfig(**options)


@pytest.fixture
def world(tmp_path: Path, releases: Releases) -> Iterator[World]:
    offline = tmp_path / "offline"
    repo = TufRepository.init(tmp_path / "data", offline_keys_dir=offline, release_keys=[releases.public_key])
    for version in ("1.0.0", "1.1.0"):
        repo.add_bundle(releases.bundles[version], offline_keys_dir=offline)
    repo.set_plan("tiny", "stable", make_plan("complete", stage_index=3, bundle_ids=releases.bundle_ids))
    server = RepoServer(repo.data_dir / "repo")
    try:
        yield World(repo, server, offline, (repo.metadata_dir / "1.root.json").read_bytes(), tmp_path)
    finally:
        server.close()


@pytest.fixture
def runtime(tmp_path: Path, releases: Releases) -> Iterator[Runtime]:
    rt = Runtime(config(tmp_path / "store", releases))
    yield rt
    rt.close()


def _nothing_installed(runtime: Runtime) -> bool:
    return runtime.status()["active"] is None


def test_full_flow_installs_through_tuf_and_then_is_up_to_date(
    world: World, runtime: Runtime, releases: Releases
) -> None:
    updater = Updater(world.config())
    decision = updater.check()
    assert decision.wanted is not None and decision.wanted.version == "1.1.0" and decision.state == "complete"
    outcome = updater.update(runtime)
    assert (outcome.status, outcome.reason) == ("installed", "installed"), outcome
    assert outcome.bundle_id == releases.bundle_ids["1.1.0"]
    assert runtime.status()["active"]["version"] == "1.1.0"
    assert not list(world.config().download_dir.glob("*.ekb"))  # the download is removed once installed
    bundle = served_path(world.repo, "bundles/tiny/tiny-1.1.0.ekb")
    assert world.server.count(bundle) == 1
    again = updater.update(runtime)
    assert (again.status, again.reason) == ("up-to-date", "active")
    assert world.server.count(bundle) == 1  # not downloaded again
    # a halted rollout sends the device to the baseline
    world.repo.set_plan("tiny", "stable", make_plan("halted", stage_index=3, bundle_ids=releases.bundle_ids))
    back = updater.update(runtime)
    assert back.decision is not None and back.decision.wanted is not None
    assert back.decision.wanted.version == "1.0.0"
    assert back.status == "installed" and runtime.status()["active"]["version"] == "1.0.0"


def test_a_device_outside_the_stage_keeps_the_baseline(
    world: World, runtime: Runtime, releases: Releases
) -> None:
    world.repo.set_plan("tiny", "stable", make_plan(stage_index=0, bundle_ids=releases.bundle_ids))
    outside = next(d for d in DEVICE_IDS if cohort_u("salt-1", d) >= 0.02)
    outcome = Updater(world.config(device_id=outside)).update(runtime)
    assert outcome.decision is not None and outcome.decision.arm == "other"
    assert outcome.status == "installed" and runtime.status()["active"]["version"] == "1.0.0"


def test_metadata_rollback_is_refused(world: World, runtime: Runtime, releases: Releases) -> None:
    old_timestamp = (world.repo.metadata_dir / "timestamp.json").read_bytes()
    world.repo.refresh_timestamp(force_snapshot=True)
    updater = Updater(world.config())
    updater.check()  # the device has seen the newer timestamp
    (world.repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(MetadataError) as caught:
        updater.check()
    assert caught.value.reason == "bad-version-number"
    outcome = updater.update(runtime)
    assert (outcome.status, outcome.reason) == ("refused", "bad-version-number")
    assert _nothing_installed(runtime)


def test_expired_timestamp_is_refused(tmp_path: Path, releases: Releases, runtime: Runtime) -> None:
    """Freeze: the server's clock stopped two days ago, so its timestamp has expired."""
    past = time.time() - 2 * 86_400
    repo = TufRepository.init(
        tmp_path / "data",
        offline_keys_dir=tmp_path / "offline",
        release_keys=[releases.public_key],
        clock=lambda: past,
    )
    repo.add_bundle(releases.bundles["1.1.0"], offline_keys_dir=tmp_path / "offline")
    repo.set_plan("tiny", "stable", make_plan("complete", 3, baseline=None, bundle_ids=releases.bundle_ids))
    server = RepoServer(repo.data_dir / "repo")
    try:
        world = World(
            repo, server, tmp_path / "offline", (repo.metadata_dir / "1.root.json").read_bytes(), tmp_path
        )
        outcome = Updater(world.config()).update(runtime)
        assert (outcome.status, outcome.reason) == ("refused", "expired-metadata")
        assert _nothing_installed(runtime)
        # with the device's injected clock also two days back, the same metadata is fresh
        assert Updater(world.config(clock=lambda: past + 60)).check().wanted is not None
    finally:
        server.close()


def test_the_injected_clock_judges_expiry(world: World) -> None:
    later = time.time() + 3 * 86_400
    with pytest.raises(MetadataError) as caught:
        Updater(world.config(clock=lambda: later)).check()
    assert caught.value.reason == "expired-metadata"


def test_mix_and_match_is_refused(world: World, runtime: Runtime) -> None:
    """The snapshot names targets v3; the server answers 3.targets.json with the bytes of v2."""
    metadata = world.repo.metadata_dir
    latest = max(int(p.name.split(".")[0]) for p in metadata.glob("*.targets.json"))
    shutil.copy(metadata / f"{latest - 1}.targets.json", metadata / f"{latest}.targets.json")
    outcome = Updater(world.config()).update(runtime)
    assert outcome.status == "refused"
    assert outcome.reason in ("length-or-hash-mismatch", "bad-version-number")
    assert _nothing_installed(runtime)


def test_a_target_tampered_on_the_server_is_refused(world: World, runtime: Runtime) -> None:
    stored = world.repo.data_dir / "repo" / served_path(world.repo, "bundles/tiny/tiny-1.1.0.ekb").lstrip("/")
    data = bytearray(stored.read_bytes())
    data[data.index(b"cat\ndog") + 1] = ord("o")
    stored.write_bytes(bytes(data))  # same length, other bytes
    updater = Updater(world.config())
    outcome = updater.update(runtime)
    assert (outcome.status, outcome.reason) == ("refused", "length-or-hash-mismatch")
    assert _nothing_installed(runtime)
    assert not [p for p in updater.config.download_dir.iterdir() if p.suffix in (".ekb", ".part")]


def _endless(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.end_headers()
    chunk = b"\0" * (64 << 10)
    try:
        for _ in range(2000):  # 128 MiB at most, far beyond the pinned length
            handler.wfile.write(chunk)
    except OSError:
        pass


def test_endless_data_is_cut_at_the_pinned_length(world: World, runtime: Runtime) -> None:
    world.server.overrides[served_path(world.repo, "bundles/tiny/tiny-1.1.0.ekb")] = _endless
    outcome = Updater(world.config()).update(runtime)
    assert (outcome.status, outcome.reason) == ("refused", "download-length-mismatch")
    assert _nothing_installed(runtime)


def test_slow_retrieval_is_refused_within_the_timeout(world: World, runtime: Runtime) -> None:
    stored = world.repo.data_dir / "repo" / served_path(world.repo, "bundles/tiny/tiny-1.1.0.ekb").lstrip("/")
    data = stored.read_bytes()

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            for index in range(0, min(len(data), 400), 4):  # 4 bytes every 50 ms: 80 B/s for at most 5 s
                handler.wfile.write(data[index : index + 4])
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    world.server.overrides[served_path(world.repo, "bundles/tiny/tiny-1.1.0.ekb")] = trickle
    updater = Updater(world.config(min_speed_bytes_per_s=10_000, speed_grace_s=0.5, timeout_s=3.0))
    outcome = updater.update(runtime)
    # slow-retrieval, not timeout: the speed floor ended the download before the 3 s request timeout
    assert (outcome.status, outcome.reason) == ("refused", "slow-retrieval"), outcome
    assert "below the floor" in outcome.detail
    assert _nothing_installed(runtime)


def test_a_root_planted_in_the_metadata_cache_is_never_trusted(
    world: World, runtime: Runtime, tmp_path: Path, releases: Releases
) -> None:
    """Attack 25: the cache is writable; the trust anchor is the root the app ships."""
    updater = Updater(world.config())
    updater.check()
    updater.close()  # one Updater per metadata directory: the redirected one below takes it over
    # The attacker runs its own repository (own keys) and can write the device's metadata cache.
    evil = TufRepository.init(
        tmp_path / "evil", offline_keys_dir=tmp_path / "evil-offline", release_keys=[releases.public_key]
    )
    evil.add_bundle(releases.bundles["1.1.0"], offline_keys_dir=tmp_path / "evil-offline")
    evil.set_plan("tiny", "stable", make_plan("complete", 3, baseline=None, bundle_ids=releases.bundle_ids))
    evil_server = RepoServer(evil.data_dir / "repo")
    try:
        cache = updater.config.metadata_dir
        for name in ("root.json", "timestamp.json", "snapshot.json", "targets.json"):
            (cache / name).unlink(missing_ok=True)
        (cache / "root.json").write_bytes((evil.metadata_dir / "1.root.json").read_bytes())
        shutil.rmtree(cache / "root_history")
        redirected = world.config(metadata_url=evil_server.metadata_url, targets_url=evil_server.targets_url)
        # the attack is real: a client that trusts its cache accepts the attacker's repository
        naive_dir = tmp_path / "naive"
        shutil.copytree(cache, naive_dir)
        naive = NgUpdater(str(naive_dir), evil_server.metadata_url, bootstrap=None)
        assert naive.get_targetinfo("rollouts/tiny/stable.json") is not None
        # the device Updater is bootstrapped from the app's root: refused
        outcome = Updater(redirected).update(runtime)
        assert (outcome.status, outcome.reason) == ("refused", "unsigned-metadata")
        assert _nothing_installed(runtime)
        # and against the genuine server the planted root is simply ignored
        assert Updater(world.config()).update(runtime).status == "installed"
    finally:
        evil_server.close()


def test_remote_names_never_become_local_paths(world: World, runtime: Runtime, tmp_path: Path) -> None:
    """Attack 26: a plan (signed with the online rollouts key) names a target path with `../`."""
    plan = make_plan("complete", 3)
    plan["target"]["target_path"] = "bundles/tiny/../../../../escape.ekb"
    plant_plan(world.repo, "stable", json.dumps(plan).encode())
    updater = Updater(world.config())
    outcome = updater.update(runtime)
    assert (outcome.status, outcome.reason) == ("refused", "unsafe-target-path")
    assert _nothing_installed(runtime)
    assert not list(tmp_path.rglob("escape*"))
    assert not [p for p in updater.config.download_dir.iterdir() if p.is_file()]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"bundle_id": "0" * 64}, "plan-mismatch", id="bundle-id-of-another-bundle"),
        pytest.param({"release_counter": 7}, "plan-mismatch", id="release-counter-the-target-lacks"),
    ],
)
def test_a_plan_that_disagrees_with_its_tuf_target_is_refused(
    world: World, runtime: Runtime, releases: Releases, change: dict[str, Any], reason: str
) -> None:
    """A holder of the online rollouts key names a real target with another bundle's identity."""
    plan = make_plan("complete", 3, baseline=None, bundle_ids=releases.bundle_ids)
    plan["target"].update(change)
    plant_plan(world.repo, "stable", json.dumps(plan).encode())
    outcome = Updater(world.config()).update(runtime)
    assert (outcome.status, outcome.reason) == ("refused", reason)
    assert _nothing_installed(runtime)


def test_a_bundle_larger_than_the_cap_is_not_downloaded(world: World, runtime: Runtime) -> None:
    outcome = Updater(world.config(max_bundle_bytes=1000)).update(runtime)
    assert (outcome.status, outcome.reason) == ("refused", "too-large")
    assert world.server.count(served_path(world.repo, "bundles/tiny/tiny-1.1.0.ekb")) == 0


def test_no_plan_and_no_server_are_typed_errors(world: World) -> None:
    beta = Updater(world.config(channel="beta"))
    with pytest.raises(PlanError) as caught:
        beta.check()
    assert caught.value.reason == "no-plan"
    beta.close()  # the error's traceback keeps it alive; the metadata directory is one Updater's at a time
    world.server.close()
    with pytest.raises(TransportError):
        Updater(world.config(timeout_s=2.0, speed_grace_s=1.0)).check()


def test_importing_the_updater_loads_no_host_package() -> None:
    import subprocess
    import sys

    from tests.device_runtime.runtime_fixtures import ROOT

    code = (
        "import sys, json\n"
        "import device_runtime.updater, device_runtime.rollout_plan\n"
        "names = ('edgekit', 'click', 'converters', 'onnx', 'onnxruntime', 'tensorflow', 'requests')\n"
        "loaded = [n for n in names if any(m == n or m.startswith(n + '.') for m in sys.modules)]\n"
        "print(json.dumps(sorted(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
