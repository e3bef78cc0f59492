"""`edgekit-tuf-client`: the command-line client the public tuf-conformance suite drives.

A host-side test harness, not device code: it runs the device's `BoundedFetcher` under python-tuf's
ngclient so the conformance suite exercises what devices download with.

    edgekit-tuf-client --metadata-dir D init ROOT_FILE
    edgekit-tuf-client --metadata-dir D --metadata-url U refresh
    edgekit-tuf-client --metadata-dir D --metadata-url U --target-name P [--target-name P2 ...]
                       --target-base-url T --target-dir O download

Options come before the command word. Exit status is exactly 0 (success) or 1 (anything else, usage errors
included); progress and reasons go to stderr.

Trust model: `init` copies ROOT_FILE into D as `root.json`; that copy is the trust anchor, and refresh and
download read D/root.json at start and pass it to ngclient as `bootstrap`. This is the conformance protocol's
model, where the metadata directory IS the client's trusted state. The device `Updater` differs on purpose:
the app gives it the bootstrap root, and its metadata directory is only a cache that is never trusted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from device_runtime.updater import BoundedFetcher
from edgekit.errors import EdgekitError
from signing.atomic import atomic_write

__all__ = ["main"]

logger = logging.getLogger("edgekit-tuf-client")

MAX_ROOT_BYTES = 512_000  # bytes, as ngclient's default root_max_length


class _UsageError(EdgekitError):
    """The command line is incomplete or malformed (exit status 1, as the protocol wants)."""


class _ClientError(EdgekitError):
    """The root file or a target name cannot be used."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting with status 2 (the protocol allows only 0 and 1)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.format_usage().strip()}\n{self.prog}: error: {message}")


def _parser() -> _Parser:
    parser = _Parser(prog="edgekit-tuf-client", description="TUF client for the tuf-conformance suite.")
    parser.add_argument("--metadata-dir", required=True, type=Path, help="trusted metadata directory")
    parser.add_argument("--metadata-url", help="base URL of the repository's metadata")
    parser.add_argument("--target-name", action="append", default=[], help="target path (repeatable)")
    parser.add_argument("--target-base-url", help="base URL of the repository's targets")
    parser.add_argument("--target-dir", type=Path, help="where downloaded targets are stored")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (python-tuf included)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{init,refresh,download}")
    init = commands.add_parser("init", help="trust ROOT_FILE (copied into the metadata directory)")
    init.add_argument("root_file", type=Path)
    commands.add_parser("refresh", help="refresh the top-level metadata")
    commands.add_parser("download", help="refresh, then download each --target-name in order")
    return parser


def _init(metadata_dir: Path, root_file: Path) -> None:
    data = root_file.read_bytes()
    if len(data) > MAX_ROOT_BYTES:
        raise _ClientError(f"{root_file}: {len(data)} bytes, above {MAX_ROOT_BYTES}")
    md = Metadata.from_bytes(data)  # refuse something that is not root metadata; no network, no signatures
    if not isinstance(md.signed, Root):
        raise _ClientError(f"{root_file} is {md.signed.type} metadata, not root")
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target = metadata_dir / "root.json"
    if target.is_symlink():  # ngclient keeps root.json as a link into root_history/
        target.unlink()
    atomic_write(target, data)
    logger.info("trusting root version %d from %s (stored in %s)", md.signed.version, root_file, target)


def _updater(args: argparse.Namespace) -> Updater:
    if not args.metadata_url:
        raise _UsageError("--metadata-url is required for refresh and download")
    bootstrap = (args.metadata_dir / "root.json").read_bytes()  # the trust anchor `init` stored
    fetcher = BoundedFetcher(timeout_s=120.0, min_speed_bytes_per_s=1024, grace_s=10.0)
    return Updater(
        str(args.metadata_dir),
        args.metadata_url,
        str(args.target_dir) if args.target_dir else None,
        args.target_base_url,
        fetcher=fetcher,
        bootstrap=bootstrap,
    )


def _download(updater: Updater, names: Sequence[str]) -> None:
    for name in names:
        info = updater.get_targetinfo(name)
        if info is None:
            raise _ClientError(f"target {name!r} is not in the repository")
        cached = updater.find_cached_target(info)
        if cached is not None:
            logger.info("%s: already in %s with matching hashes, not downloaded", name, cached)
            continue
        path = updater.download_target(info)
        logger.info("%s: downloaded and verified (%d bytes) -> %s", name, info.length, path)


def _run(args: argparse.Namespace) -> None:
    if args.command == "init":
        _init(args.metadata_dir, args.root_file)
        return
    updater = _updater(args)
    updater.refresh()
    logger.info("refresh succeeded")
    if args.command == "download":
        if not args.target_name or args.target_dir is None or not args.target_base_url:
            raise _UsageError("download needs --target-name, --target-base-url and --target-dir")
        args.target_dir.mkdir(parents=True, exist_ok=True)
        _download(updater, args.target_name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; returns 0 on success and 1 on any failure (never raises, never exits)."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        sys.stderr.write(f"{e}\n")
        return 1
    except SystemExit as e:  # --help
        return 0 if e.code in (0, None) else 1
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edgekit-tuf-client: %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    previous_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not args.verbose:
        logging.getLogger("tuf").setLevel(logging.INFO)
    try:
        _run(args)
        return 0
    except _UsageError as e:
        logger.error("%s", e)
        return 1
    except (tuf_exceptions.RepositoryError, tuf_exceptions.DownloadError) as e:
        logger.error("%s failed: %s: %s", args.command, type(e).__name__, e)
        return 1
    except Exception as e:  # the protocol wants 1 for every failure; say what it was
        logger.error("%s failed: %s: %s", args.command, type(e).__name__, e, exc_info=args.verbose)
        return 1
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous_level)


def console_main() -> NoReturn:
    """Console-script entry point (`edgekit-tuf-client`)."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
