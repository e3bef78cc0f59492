"""The metadata poll through the documented deployment: nginx (generated config) vs `edgekit serve` directly.

    python -m bench.nginx_poll [--quick] [--json OUT] [--duration S] [--connections C] [--loadgen ...]

In a temporary folder it initialises a TUF repository with one published bundle (`bench.server`), starts
one `edgekit serve` process on it, writes the nginx configuration with `edgekit deploy nginx-config`
(`repo/` static, the API proxied to that process) and runs Debian's nginx on it (one worker, its own
prefix, `tests/server/nginx.py`). Then the poll every device makes, GET /repo/metadata/timestamp.json,
is measured over C keep-alive connections for S seconds: straight from `edgekit serve` (the baseline),
then through nginx, in the same run, and their ratio is printed. Both answer the same bytes (checked).

Needs nginx (apt-get install nginx-light), so `python -m bench` does not run it. Bounded: S seconds per
measurement (10, or 3 with --quick), C connections, 127.0.0.1 only. Figures go to stdout, progress to
stderr; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.server import (
    HOST,
    POLL_PATH,
    ROOT,
    Server,
    fetch,
    free_port,
    host_info,
    make_repository,
    measure_polls,
    start_edgekit,
)


def start_nginx(data_dir: Path, upstream: Server, workdir: Path) -> tuple[Server, Any]:
    """nginx on the configuration `edgekit deploy nginx-config` writes; (as a bench Server, the process)."""
    from tests.server.nginx import NginxProcess

    port = free_port()
    site = workdir / "edgekit.conf"
    command = [sys.executable, "-m", "edgekit", "deploy", "nginx-config", "--data", str(data_dir)]
    command += ["--upstream", f"{HOST}:{upstream.port}", "--listen", f"{HOST}:{port}", "-o", str(site)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    nginx = NginxProcess(site, workdir / "nginx", port)
    nginx.wait_ready(POLL_PATH)
    version = subprocess.run([nginx.nginx, "-v"], capture_output=True, text=True, check=False).stderr
    name = f"nginx {version.strip().rpartition('/')[2]} (edgekit deploy nginx-config, 1 worker)"
    return Server(name, nginx.process, port, workdir / "nginx" / "error.log"), nginx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 3 s per measurement (smoke run)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10, --quick 3)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    if duration <= 0 or args.connections < 1:
        parser.error("--duration and --connections must be positive")
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        parser.error("nginx is not installed (apt-get install nginx-light)")
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "python")
    warmup = 0.5 if args.quick else 1.0
    host = host_info()
    print(f"host: {host['cpu']} ({host['cores']} cores), Python {host['python']}, load generator {loadgen}")
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "host": host, "loadgen": loadgen}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-nginx-") as tmp:
        workdir = Path(tmp)
        direct: Server | None = None
        nginx: Any = None
        try:
            data_dir, _ = make_repository(workdir)
            direct = start_edgekit(data_dir, workdir, workers=1, db_url=None, profile_out=None, tag="direct")
            proxied, nginx = start_nginx(data_dir, direct, workdir)
            if fetch(direct.port, POLL_PATH) != fetch(proxied.port, POLL_PATH):
                raise RuntimeError("nginx and edgekit serve answered different timestamp.json bytes")
            options = {"loadgen": loadgen, "connections": args.connections, "duration": duration}
            baseline = measure_polls(direct, warmup=warmup, workdir=workdir, **options)
            through = measure_polls(proxied, warmup=warmup, workdir=workdir, **options)
        finally:
            if nginx is not None:
                nginx.stop()
            if direct is not None:
                direct.stop()
    rates = [r.requests / r.elapsed_s if r.elapsed_s else 0.0 for r in (baseline, through)]
    ratio = rates[1] / rates[0] if rates[0] else float("nan")
    print(f"\npoll {POLL_PATH}, {args.connections} keep-alive connections, {duration:g} s each, same run")
    print(f"{'server':58} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for name, result, rate in (
        (direct.name + " (baseline)", baseline, rates[0]),
        (proxied.name, through, rates[1]),
    ):
        row = f"{name:58} {rate:9,.0f} {result.p50_ms:7.2f} {result.p99_ms:7.2f}"
        print(f"{row} {result.errors:6d}")
    print(f"nginx / edgekit serve: {ratio:.1f}x the polls per second")
    results.update(
        {
            "baseline": direct.name,
            "nginx": proxied.name,
            "edgekit": baseline.to_dict(),
            "through_nginx": through.to_dict(),
            "ratio": ratio,
        }
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
