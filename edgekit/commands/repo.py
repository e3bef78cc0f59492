"""`edgekit repo init | publish | rotate-root | status` (and top-level `edgekit publish`): the TUF repository.

Root and top-level targets keys live in the operator's offline folder (`--offline-keys`); the server's data
directory holds only the online keys (snapshot, timestamp, rollouts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgekit.commands._common import CommandError, emit_result, handle_errors, json_flag, json_option

F = TypeVar("F", bound=Callable[..., Any])

DATA_HELP = "Server data directory (holds repo/ and keys/)."
OFFLINE_HELP = "Folder of the offline root and targets keys (never inside the data directory)."


def _repository_errors(function: F) -> F:
    """RepositoryError -> one line on stderr, exit 1 (the product's other typed errors: handle_errors)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from edgekit.server.tuf_repo import RepositoryError

        try:
            return function(*args, **kwargs)
        except RepositoryError as e:
            context = click.get_current_context(silent=True)
            if context is not None and context.find_root().obj and context.find_root().obj.get("debug"):
                raise
            raise CommandError(str(e), code=type(e).__name__) from None

    return handle_errors(wrapper)  # type: ignore[return-value]


@click.group()
def repo() -> None:
    """The TUF repository devices update from: init, publish, rotate-root, status."""


@repo.command("init")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@click.option("--offline-keys", required=True, type=click.Path(path_type=Path), help=OFFLINE_HELP)
@click.option(
    "--release-key",
    "release_keys",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Release public key (PEM) bundles must be signed with (repeatable).",
)
@click.option(
    "--release-threshold",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="How many distinct release keys must have signed a bundle before it can be published.",
)
@click.option(
    "--root-threshold",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="How many root keys must sign the next root version.",
)
@click.option("--root-keys", type=click.IntRange(1), help="Number of root keys (default: the threshold).")
@json_option
@_repository_errors
def init(
    data_dir: Path,
    offline_keys: Path,
    release_keys: tuple[Path, ...],
    release_threshold: int,
    root_threshold: int,
    root_keys: int | None,
    as_json: bool,
) -> None:
    """Create the keys and version 1 of every TUF role (consistent snapshots)."""
    from edgekit.server.tuf_repo import TufRepository

    TufRepository.init(
        data_dir,
        offline_keys_dir=offline_keys,
        release_keys=list(release_keys),
        release_threshold=release_threshold,
        root_threshold=root_threshold,
        root_keys=root_keys,
    )
    bootstrap = data_dir / "repo" / "metadata" / "1.root.json"
    if as_json:
        emit_result(
            {
                "repo": str(data_dir / "repo"),
                "offline_keys": str(offline_keys),
                "bootstrap_root": str(bootstrap),
                "release_keys": [str(k) for k in release_keys],
            }
        )
        return
    click.echo(f"initialised a TUF repository in {data_dir / 'repo'}")
    click.echo(f"offline keys (root, targets) in {offline_keys}: move them offline; the server needs none")
    click.echo(f"ship {bootstrap} with the device app (bootstrap root)")
    if not release_keys:
        click.echo(
            "note: no --release-key given; publish will refuse bundles until keys are configured", err=True
        )


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@click.option("--offline-keys", required=True, type=click.Path(path_type=Path), help=OFFLINE_HELP)
@click.option(
    "--deltas",
    default=2,
    show_default=True,
    type=click.IntRange(0),
    help="Also publish deltas from this many earlier releases of the model (0: none).",
)
@json_flag("the published target")
@_repository_errors
def publish(bundle: Path, data_dir: Path, offline_keys: Path, deltas: int, as_json: bool) -> None:
    """Verify BUNDLE against the release keys and publish it as a TUF target (with deltas)."""
    from edgekit.server.tuf_repo import TufRepository

    published = TufRepository(data_dir).add_bundle(bundle, offline_keys_dir=offline_keys, deltas=deltas)
    if as_json:
        emit_result(
            {
                "path": published.path,
                "length": published.length,
                "sha256": published.sha256,
                "custom": published.custom,
                "already_published": published.already_published,
                "deltas": [
                    {"path": d.path, "length": d.length, "sha256": d.sha256, "custom": d.custom}
                    for d in published.deltas
                ],
            }
        )
        return
    verb = "already published" if published.already_published else "published"
    click.echo(f"{verb} {published.path} ({published.length:,} bytes, sha256 {published.sha256})")
    for delta in published.deltas:
        share = 100 * delta.length / published.length
        base = delta.custom["delta"].get("base_version")
        click.echo(f"  delta from {base}: {delta.path} ({delta.length:,} bytes, {share:.1f}% of the bundle)")


repo.add_command(publish)


@repo.command("rotate-root")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@click.option(
    "--offline-keys", required=True, type=click.Path(path_type=Path, exists=True), help="Current root keys."
)
@click.option(
    "--new-keys", required=True, type=click.Path(path_type=Path), help="Folder for the new root keys."
)
@click.option(
    "--threshold",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="How many of the new root keys must sign the root version after this one.",
)
@json_option
@_repository_errors
def rotate_root(data_dir: Path, offline_keys: Path, new_keys: Path, threshold: int, as_json: bool) -> None:
    """Write the next root version, trusting new root keys, signed by the old and the new keys."""
    from edgekit.server.tuf_repo import TufRepository

    version = TufRepository(data_dir).rotate_root(
        new_keys, old_offline_keys_dir=offline_keys, threshold=threshold
    )
    if as_json:
        emit_result({"root_version": version, "new_keys": str(new_keys)})
        return
    click.echo(f"wrote root version {version}; the new offline keys are in {new_keys}")


@repo.command("status")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@json_flag("the roles, targets and plans")
@_repository_errors
def status(data_dir: Path, as_json: bool) -> None:
    """Roles with versions and expiries, targets and rollout plans."""
    from edgekit.server.tuf_repo import TufRepository

    report = TufRepository(data_dir).status()
    if as_json:
        emit_result(report)
        return
    click.echo(f"repository {report['data_dir']} (consistent snapshots: {report['consistent_snapshot']})")
    for name, role in report["roles"].items():
        where = "online" if role["online"] else "offline"
        flag = "  EXPIRED" if role["expired"] else ""
        click.echo(
            f"  {name:<10} v{role['version']:<4} expires {role['expires']}  "
            f"{role['threshold']}-of-{len(role['keyids'])} {where} keys{flag}"
        )
    click.echo(f"targets ({len(report['targets'])}):")
    for target in report["targets"]:
        click.echo(f"  {target['path']}  {target['length']:,} bytes")
    click.echo(f"rollout plans ({len(report['plans'])}):")
    for plan in report["plans"]:
        click.echo(f"  {plan['path']}")
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
