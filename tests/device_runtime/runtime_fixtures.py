"""Shared helpers for the device-runtime tests and `bench.soak_runtime`: real models, keys, bundles, children.

Everything here is real: tiny ONNX models made with `onnx.helper` (x float32 [N, 8] -> MatMul -> logits
[N, 4], different fixed weights per release), an ECDSA release key from `signing.keys.generate_keypair`, and
signed `.ekb` bundles with golden vectors written by `edgekit.bundle_build.build_bundle`.

Releases of the model "tiny" (hardware rpi4):

    1.0.0  counter 1        1.1.0  counter 2        1.2.0  counter 3
    other-hw 5.0.0 counter 5, built for hardware "jetson" only
    noisy 9.0.0 counter 9: a validly signed bundle whose model adds RandomNormalLike noise (scale 100) to its
        logits, so the golden outputs recorded at build time cannot be reproduced on the device: a real
        self-test failure without tampering with the signed bundle.

Children (`Zygote`): crash tests need real processes killed with SIGKILL at random instants, hundreds of
times. A fresh interpreter costs ~0.5 s in imports, so a helper script (run with `sys.executable`) imports
the runtime once and then `os.fork()`s one child per trial; the child builds its own `Runtime` (recovery,
telemetry database, engine sessions: nothing is shared) and runs one scenario; the test kills it by pid and
the zygote reaps it and reports how it died. Each child is a separate process whose only link to the test
is the store directory on disk, exactly as a device app restarted by its OS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HARDWARE = "rpi4"
MODEL_NAME = "tiny"
LABELS = ("cat", "dog", "bird", "fish")
RELEASES = {"1.0.0": 1, "1.1.0": 2, "1.2.0": 3}
OTHER_HARDWARE = "5.0.0"
NOISY = "9.0.0"
CREATED = "2025-01-01T00:00:00Z"
ROOT = Path(__file__).resolve().parents[2]


def weights(version: str) -> np.ndarray:
    """The fixed [8, 4] weights of a release (distinct per version, so outputs name the model served)."""
    seed = sum(ord(c) * (i + 1) for i, c in enumerate(version))
    return np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32)


def write_model(path: Path, version: str, *, noisy: bool = False) -> Path:
    """x float32 [N, 8] -> MatMul(W) -> logits [N, 4] (plus random noise when `noisy`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm" if noisy else "logits"])]
    if noisy:
        nodes += [
            helper.make_node("RandomNormalLike", ["mm"], ["noise"], scale=100.0),
            helper.make_node("Add", ["mm", "noise"], ["logits"]),
        ]
    graph = helper.make_graph(
        nodes,
        f"tiny-{version}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(weights(version), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@dataclass(frozen=True)
class Releases:
    """Keys and signed bundles, built once per test module (session-like: read-only afterwards)."""

    folder: Path
    public_key: Path
    bundles: dict[str, Path] = field(default_factory=dict)
    bundle_ids: dict[str, str] = field(default_factory=dict)


def build_releases(folder: Path) -> Releases:
    """Generate a release key and build every bundle listed in the module docstring (about 0.2 s)."""
    from edgekit.bundle_build import BundleRequest, build_bundle
    from signing.keys import generate_keypair

    folder.mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair(folder / "keys", name="release")
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    plan = [(v, c, (HARDWARE,), False) for v, c in RELEASES.items()]
    plan += [(OTHER_HARDWARE, 5, ("jetson",), False), (NOISY, 9, (HARDWARE,), True)]
    releases = Releases(folder, public)
    for version, counter, hardware, noisy in plan:
        model = write_model(folder / f"tiny-{version}.onnx", version, noisy=noisy)
        result = build_bundle(
            BundleRequest(
                model=model,
                output=folder / f"tiny-{version}.ekb",
                name=MODEL_NAME,
                version=version,
                keys=[private],
                labels=labels,
                hardware_ids=hardware,
                release_counter=counter,
                created=CREATED,
            )
        )
        releases.bundles[version] = result.path
        releases.bundle_ids[version] = result.payload_sha256
    return releases


def config(store: Path, releases: Releases, **overrides: Any) -> Any:
    """A RuntimeConfig for an rpi4 pinned to the release key (one engine thread: the CI box has 2 cores)."""
    from device_runtime.config import RuntimeConfig

    options: dict[str, Any] = {"trial_inferences": 3, "trial_seconds": 0.0, "engine_threads": 1}
    options.update(overrides)
    return RuntimeConfig(
        store_dir=store,
        trusted_keys=[releases.public_key],
        device_id="device-1",
        hardware_id=HARDWARE,
        **options,
    )


def sample(rows: int = 1, seed: int = 0) -> np.ndarray:
    """A valid request: float32 [rows, 8]."""
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def expected_logits(version: str, x: np.ndarray) -> np.ndarray:
    """What release `version` must output for `x` (identifies the model actually served)."""
    return x @ weights(version)


class FakeClock:
    """An injectable clock (seconds since the epoch) that only moves when told."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_store(folder: Path, releases: Releases, versions: list[str], *, commit_last: bool = True) -> Path:
    """A store with `versions` installed in order, each committed except possibly the last."""
    from device_runtime.runtime import Runtime

    folder.mkdir(parents=True, exist_ok=True)
    rt = Runtime(config(folder, releases, trial_inferences=1))
    try:
        for index, version in enumerate(versions):
            rt.install(releases.bundles[version])
            if commit_last or index < len(versions) - 1:
                rt.predict(sample())
                assert rt.status()["trial"] is None
    finally:
        rt.close()
    return folder


def reset_store(template: Path, store: Path) -> Path:
    """Replace `store` with a copy of `template` (one store reused per trial group)."""
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(template, store, symlinks=True)
    return store


def trial_events(rt: Any, outcome: str | None = None) -> list[dict[str, Any]]:
    """Queued "trial" telemetry events (optionally of one outcome)."""
    events = [e.payload for e in rt.telemetry.pending(100_000) if e.kind == "trial"]
    return [e for e in events if outcome is None or e.get("outcome") == outcome]


def check_store(store: Path, releases: Releases, allowed: set[str], **overrides: Any) -> str:
    """After a kill: the store recovers to a verified model in `allowed` that serves its own outputs.

    Checks, in order: state.json on disk is readable (atomic writes: never torn), a Runtime starts,
    no .incoming-* is left, the active (and previous) slots verify and match the state's bundle ids, and
    predict returns exactly the outputs of the version the state names. Returns that version.
    """
    from device_runtime.runtime import Runtime
    from device_runtime.state import load_state
    from signing.keys import load_public_key
    from signing.verify import VerifyPolicy, verify_directory

    on_disk = load_state(store / "state.json")
    assert on_disk is not None, "state.json is torn or missing after a kill"
    assert on_disk.active is not None, "the state lost its active model"
    rt = Runtime(config(store, releases, **overrides))
    try:
        assert not list((store / "slots").glob(".incoming-*")), "a half-finished install was left behind"
        status = rt.status()
        version = status["active"]["version"]
        assert version in allowed, f"serving {version}, expected one of {sorted(allowed)}"
        keys = [load_public_key(releases.public_key)]
        policy = VerifyPolicy(hardware_id=HARDWARE)
        for role in ("active", "previous"):
            record = status[role]
            if record is not None:
                verified = verify_directory(store / "slots" / record["slot"], keys, policy=policy)
                assert verified.payload_sha256 == record["bundle_id"]
                assert record["bundle_id"] == releases.bundle_ids[record["version"]]
        x = sample(2, seed=7)
        result = rt.predict(x)
        assert result.version == version
        np.testing.assert_allclose(
            result.outputs["logits"], expected_logits(version, x), rtol=1e-5, atol=1e-5
        )
        assert load_state(store / "state.json") is not None
        return version
    finally:
        rt.close()


# ---- children -------------------------------------------------------------------------------------------

ZYGOTE_SOURCE = r'''
"""Zygote: import the runtime once, then fork one child per request line (JSON) and report how it died."""
import json, os, signal, sys, time, traceback
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (imported before fork, sessions only ever created in children)
from device_runtime.config import RuntimeConfig
from device_runtime.runtime import Runtime
import device_runtime.engines, device_runtime.golden, device_runtime.preprocess  # noqa: F401,E401

X = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)


def make(args):
    return Runtime(RuntimeConfig(
        store_dir=Path(args["store"]), trusted_keys=[Path(args["public_key"])], device_id="device-1",
        hardware_id=args["hardware"], trial_inferences=args.get("trial_inferences", 3),
        trial_seconds=args.get("trial_seconds", 0.0), engine_threads=1,
    ))


def report(args, **values):
    if args.get("out"):
        Path(args["out"]).write_text(json.dumps(values))


def install(args):
    rt = make(args)
    rt.install(args["bundle"])
    report(args, version=rt.status()["active"]["version"])


def trial_loop(args):
    rt = make(args)
    for _ in range(args.get("count", 50)):
        rt.predict(X)
    report(args, version=rt.status()["active"]["version"])


def start(args):
    """One app start: Runtime(...), optionally install, then predict once (crashing if told to)."""
    rt = make(args)
    if args.get("bundle"):
        rt.install(args["bundle"])
    if rt.status()["active"]["version"] == args.get("bad_version"):
        loaded = rt._ensure_loaded()
        mode = args["mode"]

        def run(feeds):
            if mode == "segv":
                import ctypes
                ctypes.string_at(0)  # a real SIGSEGV inside the inference
            if mode == "abort":
                os.abort()
            Path(args["ready"]).write_text("in engine run")
            while True:  # a hang: only a watchdog's SIGKILL ends it
                time.sleep(3600)

        loaded.engine.run = run
    result = rt.predict(X)
    report(args, version=result.version)


def power_loss(args):
    """Die by SIGKILL between writing state.json's temporary file and renaming it, on the nth rename."""
    rt = make(args)
    real_replace, seen = os.replace, [0]

    def replace(src, dst, *a, **k):
        if Path(dst).name == "state.json":
            seen[0] += 1
            if seen[0] == args["nth"]:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)

    os.replace = replace
    rt.install(args["bundle"])
    for _ in range(args.get("count", 0)):
        rt.predict(X)
    report(args, version=rt.status()["active"]["version"], renames=seen[0])


SCENARIOS = {"install": install, "trial_loop": trial_loop, "start": start, "power_loss": power_loss}

print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    args = json.loads(line)
    began = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.dup2(2, 1)  # the protocol pipe is the zygote's alone
            SCENARIOS[args["op"]](args)
        except BaseException:
            traceback.print_exc()
            code = 3
        finally:
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    sys.stdin.readline()  # reap only when told: until then the pid cannot be reused, so a kill is safe
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - began
    if os.WIFSIGNALED(status):
        print(json.dumps({"signal": os.WTERMSIG(status), "seconds": elapsed}), flush=True)
    else:
        print(json.dumps({"exit": os.WEXITSTATUS(status), "seconds": elapsed}), flush=True)
'''


def _exited(pid: int) -> bool:
    """The child has ended (a zombie the zygote has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@dataclass
class ChildResult:
    """How a child ended: `signal` (e.g. SIGKILL, SIGSEGV) or `exit` code, and its lifetime in seconds."""

    pid: int
    signal: int | None
    exit: int | None
    seconds: float


class Zygote:
    """A helper interpreter that forks children on request; the caller may SIGKILL them by pid."""

    def __init__(self, folder: Path, releases: Releases) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.releases = releases
        self.script = folder / "zygote.py"
        self.script.write_text(ZYGOTE_SOURCE)
        self.log = folder / "zygote.log"
        self._log_handle = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(self.script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_handle,
            cwd=ROOT,
            # The script's folder, not the cwd, heads sys.path: name this checkout, or an editable install
            # of another checkout would be imported instead.
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            },
            text=True,
            bufsize=1,
        )
        self._read()  # {"ready": pid}: imports done

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died; its log:\n{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def run(
        self,
        op: str,
        store: Path,
        *,
        kill_after: float | None = None,
        kill_when: Path | None = None,
        watchdog: float = 0.0,
        limit: float = 60.0,
        **args: Any,
    ) -> ChildResult:
        """Fork a child running scenario `op` on `store`; optionally SIGKILL it after `kill_after` seconds
        (from the fork), or `watchdog` seconds after the file `kill_when` appears (a hang watchdog)."""
        request = {
            "op": op,
            "store": str(store),
            "public_key": str(self.releases.public_key),
            "hardware": HARDWARE,
            **{k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
        }
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        began = time.perf_counter()
        pid = int(self._read()["pid"])
        if kill_after is not None:
            time.sleep(max(0.0, kill_after - (time.perf_counter() - began)))
            os.kill(pid, signal.SIGKILL)  # not reaped until we say so: the pid is still this child's
        elif kill_when is not None:
            while not kill_when.exists() and not _exited(pid):
                if time.perf_counter() - began > limit:
                    break
                time.sleep(0.005)
            if not _exited(pid):
                time.sleep(watchdog)
                os.kill(pid, signal.SIGKILL)
        self.process.stdin.write("reap\n")
        self.process.stdin.flush()
        ended = self._read()
        return ChildResult(pid, ended.get("signal"), ended.get("exit"), float(ended["seconds"]))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_handle.close()


# ---- the randomized kill loop (shared by test_crash_safety and bench.soak_runtime) -----------------------

GROUPS: dict[str, tuple[list[str], bool, str, dict[str, Any], set[str]]] = {
    # name: (template versions, last one committed?, scenario, extra args, versions a survivor may serve)
    "install-next": (["1.0.0"], True, "install", {"bundle": "1.1.0"}, {"1.0.0", "1.1.0"}),
    "install-reusing-previous-slot": (
        ["1.0.0", "1.1.0"],
        True,
        "install",
        {"bundle": "1.2.0"},
        {"1.1.0", "1.2.0"},
    ),
    "trial-inferences": (["1.0.0", "1.1.0"], False, "trial_loop", {"count": 12}, {"1.0.0", "1.1.0"}),
}


@dataclass
class KillStats:
    """Counts of a kill loop."""

    trials: int = 0
    killed: int = 0
    finished: int = 0
    extra: int = 0  # kills added because the planned ones missed one side of a swap
    versions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    durations: dict[str, float] = field(default_factory=dict)


def kill_loop(
    folder: Path, releases: Releases, zygote: Zygote, trials: dict[str, int], seed: int, stop_on_failure: bool
) -> KillStats:
    """For each group: build a template store once, measure the uninterrupted scenario, then `trials[group]`
    times reset the store, fork the scenario, SIGKILL it after a random delay in [0, 1.1 x duration] and
    check the store with `check_store`. A group whose kills never landed on one side of its swap (a busy or
    emulated host runs slower than the measured duration) gets up to `trials[group]` more kills, later in
    [0.5, 2] x duration, until a kill left each version it may serve: the swap is explored at any speed."""
    import random

    rng = random.Random(seed)
    stats = KillStats()
    began = time.perf_counter()
    for group, count in trials.items():
        versions, commit_last, op, extra, allowed = GROUPS[group]
        template = make_store(folder / f"template-{group}", releases, versions, commit_last=commit_last)
        store = folder / f"store-{group}"
        args: dict[str, Any] = {k: releases.bundles[v] if k == "bundle" else v for k, v in extra.items()}
        measured = []
        for _ in range(3):
            reset_store(template, store)
            result = zygote.run(op, store, **args)
            assert result.exit == 0, f"{group}: the uninterrupted scenario failed:\n{zygote.log_tail()}"
            measured.append(result.seconds)
        duration = sorted(measured)[1]
        stats.durations[group] = duration
        for trial in range(2 * count):
            if trial >= count and (set(stats.versions) >= allowed or stats.failures):
                break
            reset_store(template, store)
            late = trial >= count  # an extra kill: the first `count` never hit one side of the swap
            delay = rng.uniform(0.5 * duration, 2.0 * duration) if late else rng.uniform(0.0, 1.1 * duration)
            stats.extra += late
            result = zygote.run(op, store, kill_after=delay, **args)
            stats.trials += 1
            if result.signal == signal.SIGKILL:
                stats.killed += 1
            elif result.exit == 0:
                stats.finished += 1
            else:
                stats.failures.append(f"{group} #{trial}: child ended {result}:\n{zygote.log_tail(1500)}")
            try:
                version = check_store(store, releases, allowed)
                stats.versions[version] = stats.versions.get(version, 0) + 1
            except AssertionError as e:
                stats.failures.append(f"{group} #{trial} (killed after {delay:.4f} s): {e}")
                preserved = folder / f"failed-{group}-{trial}"
                shutil.rmtree(preserved, ignore_errors=True)
                shutil.copytree(store, preserved)
            if stats.failures and stop_on_failure:
                break
        if stats.failures and stop_on_failure:
            break
    stats.seconds = time.perf_counter() - began
    return stats
