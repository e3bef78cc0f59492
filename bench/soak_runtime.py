"""Soak the device runtime's crash safety: the randomized SIGKILL loop of test_crash_safety, for longer.

    python -m bench.soak_runtime [--trials 2000] [--seed S] [--keep DIR]

Builds, in a temporary folder, a release key and signed bundles of tiny real ONNX models (releases 1.0.0,
1.1.0, 1.2.0 with counters 1..3), then runs `trials` kills split over three groups (3/8, 3/8, 2/8):

  install-next                   store with 1.0.0 committed; a child installs 1.1.0
  install-reusing-previous-slot  1.0.0 then 1.1.0 committed; a child installs 1.2.0 into 1.0.0's slot
  trial-inferences               1.1.0 on trial over 1.0.0; a child runs trial inferences (commit included)

Each trial resets the store from its template, forks a child from a zygote interpreter (runtime imported
once), SIGKILLs it after a random delay in [0, 1.1 x the measured uninterrupted duration], then starts a
Runtime on the store and checks: state.json readable, no .incoming-* left, the slots verify, predict serves
exactly the outputs of the old or the new release. Prints counts and trials per second; exits 1 on any
failure (the failing stores are kept under --keep, or a printed temporary folder). Not an assertion of the
test suite; failures=0 is the expected outcome.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000, help="kill trials in all (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays (default 0)")
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it (default: temp)")
    args = parser.parse_args(argv)
    if args.trials < 3:
        parser.error("--trials must be at least 3")

    from tests.device_runtime.runtime_fixtures import Zygote, build_releases, kill_loop

    third = args.trials * 3 // 8
    trials = {
        "install-next": third,
        "install-reusing-previous-slot": third,
        "trial-inferences": args.trials - 2 * third,
    }
    folder = args.keep or Path(tempfile.mkdtemp(prefix="edgekit-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.trials} trials, seed {args.seed}, in {folder}", file=sys.stderr)
    releases = build_releases(folder / "releases")
    zygote = Zygote(folder / "zygote", releases)
    try:
        stats = kill_loop(folder / "work", releases, zygote, trials, args.seed, stop_on_failure=False)
    finally:
        zygote.close()
    rate = stats.trials / stats.seconds if stats.seconds else 0.0
    print(f"trials          {stats.trials}")
    print(f"  per group     {trials}")
    print(f"killed          {stats.killed}")
    print(f"finished first  {stats.finished}  (the delay outlasted the scenario)")
    for version, count in sorted(stats.versions.items()):
        print(f"serving {version:<7} {count}")
    durations = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stats.durations.items())
    print(f"scenario        {durations} (uninterrupted, median of 3)")
    print(f"failures        {len(stats.failures)}")
    print(f"time            {stats.seconds:.1f} s, {rate:.1f} trials/s")
    for failure in stats.failures[:5]:
        print(f"\nFAILURE {failure}", file=sys.stderr)
    if stats.failures:
        print(f"failing stores kept in {folder / 'work'}", file=sys.stderr)
        return 1
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
