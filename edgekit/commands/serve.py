"""`edgekit serve`: run the rollout server (uvicorn) on a data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import handle_errors


def admin_token(data_dir: Path, env: str) -> tuple[str, str]:
    """The admin token from the environment, else from DATA/keys/admin.token (created 0600 once)."""
    value = os.environ.get(env)
    if value:
        return value, f"${env}"
    path = data_dir / "keys" / "admin.token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), str(path)


@click.command()
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=Path("edgekit-data"),
    show_default=True,
    help="Server data directory (repo/, keys/, edgekit.db); create it with `edgekit repo init`.",
)
@click.option(
    "--db", "db_url", help="Database URL (default: SQLite in the data directory; postgresql://...)."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--admin-token-env",
    default="EDGEKIT_ADMIN_TOKEN",
    show_default=True,
    help="Environment variable with the admin token (else DATA/keys/admin.token is used).",
)
@click.option(
    "--evaluate-every",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds between gate evaluations (0: only on POST /v1/admin/evaluate).",
)
@click.option(
    "--gates",
    "gates_file",
    type=click.Path(path_type=Path),
    help="JSON object of GateConfig fields overriding the defaults (e.g. for a small fleet).",
)
# --workers: N server processes on one port (uvicorn's process manager, each process builds the app from
# `worker_app`); the background gate evaluator stays single through the database's evaluator lock.
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes sharing the port (telemetry ingest scales with them; gates evaluate in one).",
)
@handle_errors
def serve(
    data_dir: Path,
    db_url: str | None,
    host: str,
    port: int,
    admin_token_env: str,
    evaluate_every: float,
    gates_file: Path | None,
    workers: int,
) -> None:
    """Serve the TUF repository, telemetry ingest, admin API, metrics and dashboard."""
    import uvicorn

    from edgekit.server.app import ServerConfig, create_app
    from edgekit.server.storage import StorageError, open_database

    if not (data_dir / "repo" / "metadata" / "root.json").is_file():
        raise click.ClickException(
            f"{data_dir}: no TUF repository; create it with "
            f"`edgekit repo init --data {data_dir} --offline-keys DIR`"
        )
    try:
        database = open_database(db_url, data_dir)
    except StorageError as e:
        raise click.ClickException(str(e)) from None
    gates = load_gates(gates_file)
    token, where = admin_token(data_dir, admin_token_env)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "access_log": False}
    if workers > 1:  # the schema exists now (open_database above): the workers only open it
        database.close()
        os.environ.update(
            {
                _WORKER_ENV["data"]: str(data_dir.resolve()),
                _WORKER_ENV["db"]: db_url or "",
                _WORKER_ENV["token_env"]: admin_token_env,
                _WORKER_ENV["evaluate_every"]: repr(evaluate_every),
                _WORKER_ENV["gates"]: str(gates_file.resolve()) if gates_file else "",
            }
        )
        click.echo(
            f"edgekit serve on http://{host}:{port} with {workers} worker processes  "
            f"(dashboard /dashboard, admin token from {where})"
        )
        uvicorn.run("edgekit.commands.serve:worker_app", factory=True, workers=workers, **options)
        return
    app = create_app(
        ServerConfig(
            data_dir=data_dir,
            database=database,
            admin_token=token,
            evaluate_every_s=evaluate_every,
            gates=gates,
        )
    )
    click.echo(f"edgekit serve on http://{host}:{port}  (dashboard /dashboard, admin token from {where})")
    uvicorn.run(app, **options)


_WORKER_ENV = {
    "data": "EDGEKIT_SERVE_DATA",
    "db": "EDGEKIT_SERVE_DB",
    "token_env": "EDGEKIT_SERVE_ADMIN_TOKEN_ENV",
    "evaluate_every": "EDGEKIT_SERVE_EVALUATE_EVERY",
    "gates": "EDGEKIT_SERVE_GATES",
}


def worker_app() -> Any:
    """The app of one `edgekit serve --workers N` process (uvicorn calls it in each worker), configured
    by the parent through the environment it inherits."""
    from edgekit.server.app import ServerConfig, create_app
    from edgekit.server.storage import open_database

    data_dir = Path(os.environ[_WORKER_ENV["data"]])
    database = open_database(os.environ[_WORKER_ENV["db"]] or None, data_dir)
    gates = os.environ[_WORKER_ENV["gates"]]
    token, _ = admin_token(data_dir, os.environ[_WORKER_ENV["token_env"]])
    return create_app(
        ServerConfig(
            data_dir=data_dir,
            database=database,
            admin_token=token,
            evaluate_every_s=float(os.environ[_WORKER_ENV["evaluate_every"]]),
            gates=load_gates(Path(gates) if gates else None),
        )
    )


def load_gates(path: Path | None) -> Any:
    """GateConfig from a JSON file of overrides (strict JSON; unknown fields refused)."""
    from edgekit.rollout.gates import GateConfig
    from signing.errors import FormatError
    from signing.strict_json import parse_strict

    if path is None:
        return GateConfig()
    try:
        document = parse_strict(path.read_bytes(), what=str(path), max_bytes=1 << 16)
    except (OSError, FormatError) as e:
        raise click.ClickException(f"{path}: cannot read the gate configuration ({e})") from None
    if not isinstance(document, dict):
        raise click.ClickException(f"{path}: expected a JSON object of GateConfig fields")
    known = set(GateConfig.__dataclass_fields__)
    unknown = sorted(set(document) - known)
    if unknown:
        raise click.ClickException(f"{path}: unknown gate fields {unknown}; known: {sorted(known)}")
    if "stage_min_hours" in document:
        document["stage_min_hours"] = tuple(tuple(pair) for pair in document["stage_min_hours"])
    try:
        return GateConfig(**document)
    except Exception as e:  # GateConfigError and type errors: one line, no traceback
        raise click.ClickException(f"{path}: {e}") from None
