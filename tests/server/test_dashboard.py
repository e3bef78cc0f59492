"""The dashboard rendered by a real headless Chromium (Debian's package), asserting what a person sees."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import ADMIN_TOKEN
from tests.server.fleet import HOUR, evaluate, fleet_telemetry, start_rollout

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


@pytest.fixture()
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def browse(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dashboard_shows_stages_charts_decisions_and_fleet(chromium: str, fleet: Any, tmp_path: Path) -> None:
    server, clock, tokens = fleet
    plan = start_rollout(server, "1.2.0", "1.0.0", [10, 50, 100])
    fleet_telemetry(server, plan, tokens, clock.now, crash_every_hours=1.0)
    clock.now += 3 * HOUR
    assert evaluate(server)["state"] == "rolled_back"
    url = f"{server.http.base}/dashboard#token={ADMIN_TOKEN}"  # the admin token reads the dashboard too
    dom = browse(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "tiny 1.2.0 over 1.0.0" in page and "rolled_back" in page
    ladder = re.findall(r'class="step[a-z ]*">(\d+)%<', page)  # rendered steps, not the script source
    assert ladder == ["10", "50", "100"]
    assert "<svg" in page and 'aria-label="crash_rate"' in page  # treatment vs control charts
    assert "decision log" in page and ">rollback<" in page  # the decision that halted it
    assert "devices by running version" in page and "tiny 1.2.0" in page and "tiny 1.0.0" in page
    shot = Path(os.environ.get("EDGEKIT_DASHBOARD_PNG", tmp_path / "dashboard.png"))
    picture = browse(
        chromium, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,1400", url
    )
    assert picture.returncode == 0 and shot.stat().st_size > 20_000, picture.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
