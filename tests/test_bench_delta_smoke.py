"""Smoke test of `bench.delta`: it measures every scenario and renders its rows. No size or time thresholds.

Benchmarks are not assertions. The real scenarios train the digits CNN (minutes); here
the bench's measuring and reporting code runs on the small test releases standing in for each scenario.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import delta_rows
from bench.delta import measure, table
from tests.device_runtime.runtime_fixtures import build_releases

STAND_INS = {
    "v1": "1.0.0",
    "v1.int8": "1.0.0",
    "rerelease": "1.1.0",
    "head": "1.1.0",
    "finetune": "1.2.0",
    "finetune.int8": "1.2.0",
    "scratch": "1.2.0",
}


@pytest.mark.slow
def test_delta_bench_measures_every_scenario_and_reports_each_target(tmp_path: Path) -> None:
    releases = build_releases(tmp_path / "releases")
    document = measure({name: releases.bundles[v] for name, v in STAND_INS.items()}, repeats=1)
    rows = document["rows"]
    assert len(rows) == 5
    for row in rows:
        assert 0 < row["delta"] < row["full"] and row["verify_s"] > 0 and row["rebuild_verify_s"] > 0
        assert row["delta"] == min(row["structured"], row["generic"])
        assert {t["name"] for t in row["targets"]} >= {"<= full bundle", "<= zstd --patch-from"}
    assert table(document).count("\n") == 6
    assert len(delta_rows(document)) == 10
