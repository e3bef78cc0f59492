"""`edgekit rollout watch` against a real server on loopback: a live view in words, and JSON for scripts."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.rollout.plan import RolloutPlan
from tests.server.conftest import ADMIN_TOKEN
from tests.server.fleet import HOUR, evaluate, fleet_telemetry, start_rollout

ROOT = Path(__file__).resolve().parents[2]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Watcher:
    """`edgekit rollout watch` in its own process; its lines arrive on a queue (no blocking reads)."""

    def __init__(self, base: str, rollout_id: str) -> None:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "EDGEKIT_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgekit",
                "rollout",
                "--server",
                base,
                "watch",
                rollout_id,
                "--every",
                "0.2",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As from a terminal: a job started in the background by a non-interactive shell (CI runners
            # often are) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self) -> str:
        return self.lines.get(timeout=60)

    def wait(self) -> tuple[int, str]:
        code = self.process.wait(timeout=60)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()


def current(server: Any, rollout_id: str) -> RolloutPlan:
    status, body = server.http.request("GET", f"/v1/admin/rollouts/{rollout_id}", token=ADMIN_TOKEN)
    assert status == 200, body
    return RolloutPlan.from_dict(body["plan"])


def watch(server: Any, *args: str) -> Any:
    return CliRunner(env={"EDGEKIT_ADMIN_TOKEN": ADMIN_TOKEN}).invoke(
        cli, ["rollout", "--server", server.http.base, "watch", *args]
    )


def test_watch_prints_a_line_in_words_per_change_and_stops_when_the_rollout_is_complete(fleet: Any) -> None:
    server, clock, tokens = fleet
    # A 20% first stage: a 10% arm of 240 devices is sometimes 12 devices, and a healthy release is then
    # rightly held on the install-failure bound instead of promoted.
    plan = start_rollout(server, "1.1.0", "1.0.0", [20, 50, 100])
    once = watch(server, plan.rollout_id, "--once")
    assert once.exit_code == 0, once.output
    assert once.stdout.count("\n") == 1
    assert "tiny 1.1.0 over 1.0.0: stage 20% (1 of 3), running" in once.stdout
    assert "decision: rollout started" in once.stdout

    live, interrupted = Watcher(server.http.base, plan.rollout_id), Watcher(server.http.base, plan.rollout_id)
    first = live.next_line()
    assert "stage 20% (1 of 3), running" in first
    assert interrupted.next_line().endswith(first.split("  ", 1)[1])
    interrupted.process.send_signal(signal.SIGINT)  # Ctrl-C: stop watching, exit 0, no traceback
    code, errors = interrupted.wait()
    assert code == 0 and "Traceback" not in errors, errors

    counts = fleet_telemetry(server, plan, tokens, clock.now)
    clock.now += 3 * HOUR
    assert evaluate(server)["decision"]["outcome"] == "promote"
    promoted = live.next_line()
    assert "stage 50% (2 of 3), running" in promoted
    assert f"devices: {counts['treatment']} on the update, {counts['control']} in the control" in promoted
    assert "checks: all " in promoted and " ok; " in promoted
    assert "decision: promote to the next stage (at stage 20%)" in promoted
    for _ in range(2):
        plan = current(server, plan.rollout_id)  # the arms change with the stage
        fleet_telemetry(server, plan, tokens, clock.now)
        clock.now += 3 * HOUR
        evaluate(server)
    code, errors = live.wait()  # the rollout is complete: watch stops by itself
    rest = []
    while not live.lines.empty():
        rest.append(live.lines.get())
    assert code == 0, errors
    assert "stage 100% (3 of 3), complete" in rest[-1], rest
    assert "decision: complete: every device gets the update" in rest[-1]
    assert len(set(rest)) == len(rest), "a line is printed only when something changed"

    scripted = watch(server, plan.rollout_id, "--once", "--json")
    document = json.loads(scripted.stdout)
    assert scripted.exit_code == 0 and scripted.stdout.count("\n") == 1, "one JSON object on one line"
    assert document["ok"] is True and document["command"] == "rollout watch"
    assert document["state"] == "complete" and document["stage_percent"] == 100
    assert (
        document["decision"]["outcome"] == "promote" and document["decision"]["checks"]["exposure"] == "pass"
    )
    assert "complete" in document["line"]


def test_watching_an_unknown_rollout_is_one_error_line(fleet: Any) -> None:
    server, _, _ = fleet
    result = watch(server, "no-such-rollout", "--json")
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and document["ok"] is False
    assert document["error"]["code"] == "ServerError" and "404" in document["error"]["message"]
