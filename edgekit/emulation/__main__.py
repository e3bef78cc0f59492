"""`python -m edgekit.emulation`: the arm64 root from a shell (scripts/arm64.sh uses it).

    python -m edgekit.emulation root [--path DIR]
        build or reuse the root; print its path
    python -m edgekit.emulation run [--root DIR] [--bind HOST:INSIDE]... [--env NAME=VALUE]...
                                    [--timeout SECONDS] [--cwd DIR] -- COMMAND [ARGS...]
        run COMMAND in the root (output passes through); exit with its exit code

Exit status 125 when the root cannot be built or entered (the message says why and how to fix it).
"""

from __future__ import annotations

import argparse
import sys

from edgekit.emulation.chroot import run_in_root
from edgekit.emulation.errors import EmulationError
from edgekit.emulation.root import default_root_path, ensure_root

SETUP_FAILED = 125  # distinct from the exit codes of the command run in the root


def _pair(text: str, sep: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left or not right:
        raise argparse.ArgumentTypeError(f"expected LEFT{sep}RIGHT, got {text!r}")
    return left, right


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m edgekit.emulation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_root = sub.add_parser("root", help="build or reuse the arm64 root and print its path")
    p_root.add_argument("--path", default=None, help=f"the root (default {default_root_path()})")
    p_run = sub.add_parser("run", help="run a command in the arm64 root")
    p_run.add_argument("--root", default=None,
                       help=f"use this root as it is (default: build or reuse {default_root_path()})")
    p_run.add_argument("--bind", action="append", default=[], type=lambda s: _pair(s, ":"),
                       metavar="HOST:INSIDE", help="bind-mount a host path into the root")
    p_run.add_argument("--env", action="append", default=[], type=lambda s: _pair(s, "="),
                       metavar="NAME=VALUE", help="add a variable to the clean environment")
    p_run.add_argument("--timeout", type=float, default=None, help="seconds before the command is killed")
    p_run.add_argument("--cwd", default=None, help="working directory inside the root")
    p_run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    try:
        if args.command == "root":
            print(ensure_root(args.path))
            return 0
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error("run needs a command after --")
        # An explicit --root is used as it is (it may be a root edgekit did not build); the default is
        # built or refreshed first.
        root = args.root or ensure_root()
        proc = run_in_root(root, command, binds=dict(args.bind), env=dict(args.env), timeout=args.timeout,
                           cwd=args.cwd, capture=False)
        return proc.returncode
    except EmulationError as e:
        print(f"error: {e}", file=sys.stderr)
        return SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
