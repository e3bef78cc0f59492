"""`edgekit serve`: run the rollout server (uvicorn) on a data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import CommandError, emit_result, handle_errors, json_flag

# The client deadlines' defaults and ranges, once: `edgekit deploy nginx-config` takes the same options so
# nginx holds clients to what the server would (the defaults are edgekit.server.front.FrontLimits').
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 10.0, 60.0


def header_timeout_option(help_text: str) -> Any:
    """`--header-timeout SECONDS` (default HEADER_TIMEOUT_S)."""
    return click.option(
        "--header-timeout",
        default=HEADER_TIMEOUT_S,
        show_default=True,
        type=click.FloatRange(0.5, 600),
        help=help_text,
    )


def body_timeout_option(help_text: str) -> Any:
    """`--body-timeout SECONDS` (default BODY_TIMEOUT_S)."""
    return click.option(
        "--body-timeout",
        default=BODY_TIMEOUT_S,
        show_default=True,
        type=click.FloatRange(0.5, 3600),
        help=help_text,
    )


def admin_token(data_dir: Path, env: str) -> tuple[str, str]:
    """The admin token from the environment, else from DATA/keys/admin.token (created 0600 once)."""
    return _token(data_dir, env, "admin.token")


def dashboard_token(data_dir: Path, env: str) -> tuple[str, str]:
    """The read-only dashboard token from the environment, else DATA/keys/dashboard.token (0600, once)."""
    return _token(data_dir, env, "dashboard.token")


def _token(data_dir: Path, env: str, name: str) -> tuple[str, str]:
    value = os.environ.get(env)
    if value:
        return value, f"${env}"
    path = data_dir / "keys" / name
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
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface)."
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: one the OS picks; --json reports it).",
)
@click.option(
    "--admin-token-env",
    default="EDGEKIT_ADMIN_TOKEN",
    show_default=True,
    help="Environment variable with the admin token (else DATA/keys/admin.token is used).",
)
@click.option(
    "--dashboard-token-env",
    default="EDGEKIT_DASHBOARD_TOKEN",
    show_default=True,
    help="Environment variable with the read-only dashboard token (else DATA/keys/dashboard.token).",
)
@click.option(
    "--public-dashboard",
    is_flag=True,
    help="UNSAFE outside a lab: serve the dashboard and its data (the fleet's rollouts) without a token.",
)
@header_timeout_option("Seconds a client has to send a request's line and headers (slow clients are closed).")
@body_timeout_option("Seconds a client has to send a request's body once its headers are in.")
@click.option(
    "--max-connections",
    default=10_000,
    show_default=True,
    type=click.IntRange(16),
    help="Open connections held at most (lower if the file limit needs it); past it the oldest slow "
    "client is closed.",
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
@json_flag("the address and data directory once the server listens (instead of the banner)")
@handle_errors
def serve(
    data_dir: Path,
    db_url: str | None,
    host: str,
    port: int,
    admin_token_env: str,
    dashboard_token_env: str,
    public_dashboard: bool,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    evaluate_every: float,
    gates_file: Path | None,
    workers: int,
    as_json: bool,
) -> None:
    """Serve the TUF repository, telemetry ingest, admin API, metrics and dashboard."""
    from edgekit.server import front
    from edgekit.server.app import ServerConfig, create_app
    from edgekit.server.storage import StorageError, open_database

    if not (data_dir / "repo" / "metadata" / "root.json").is_file():
        raise CommandError(
            f"{data_dir}: no TUF repository",
            code="NoRepository",
            hint=f"create it with `edgekit repo init --data {data_dir} --offline-keys DIR`",
        )
    try:
        database = open_database(db_url, data_dir)
    except StorageError as e:
        raise CommandError(str(e), code="StorageError") from None
    gates = load_gates(gates_file)
    token, where = admin_token(data_dir, admin_token_env)
    viewer, viewer_where = (None, "") if public_dashboard else dashboard_token(data_dir, dashboard_token_env)
    limits = front.FrontLimits(
        header_timeout_s=header_timeout, body_timeout_s=body_timeout, max_connections=max_connections
    )
    file_limit, _ = front.raise_file_limit()
    cap = front.connection_cap(limits, file_limit)
    base = f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{port}"
    processes = f" with {workers} worker processes" if workers > 1 else ""
    if public_dashboard:
        click.echo(
            f"UNSAFE: --public-dashboard: anyone who can reach {base}/dashboard reads the fleet's rollouts",
            err=True,
        )

    def ready(bound_host: str, bound_port: int) -> None:
        """The banner (or the --json line) once the socket listens, with the port really bound."""
        shown = f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{bound_port}"
        # The token rides in the URL fragment: the browser never sends a fragment to any server.
        dashboard = f"{shown}/dashboard" + ("" if public_dashboard else f"#token={viewer}")
        if as_json:
            emit_result(
                {
                    "event": "ready",
                    "address": shown,
                    "host": bound_host,
                    "port": bound_port,
                    "data_dir": str(data_dir),
                    "workers": workers,
                    "dashboard": dashboard,
                    "admin_token_from": where,
                    "dashboard_token_from": viewer_where or None,
                    "pid": os.getpid(),
                },
                line=True,
            )
            return
        click.echo(f"edgekit serve on http://{host}:{bound_port}{processes}  (admin token from {where})")
        token_from = "" if public_dashboard else f"  (token from {viewer_where})"
        click.echo(f"dashboard: {dashboard}{token_from}")
        click.echo(
            f"front: headers within {header_timeout:g} s, bodies within {body_timeout:g} s, "
            f"at most {cap} connections (open-file limit {file_limit})"
        )

    options: dict[str, Any] = {
        "front": limits,
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
    }
    if workers > 1:  # the schema exists now (open_database above): the workers only open it
        database.close()
        os.environ.update(
            {
                _WORKER_ENV["data"]: str(data_dir.resolve()),
                _WORKER_ENV["db"]: db_url or "",
                _WORKER_ENV["token_env"]: admin_token_env,
                _WORKER_ENV["dashboard_token_env"]: dashboard_token_env,
                _WORKER_ENV["public_dashboard"]: "1" if public_dashboard else "",
                _WORKER_ENV["evaluate_every"]: repr(evaluate_every),
                _WORKER_ENV["gates"]: str(gates_file.resolve()) if gates_file else "",
            }
        )
        factory = "edgekit.commands.serve:worker_app"
        front.run(front.FrontConfig(factory, factory=True, workers=workers, **options), on_ready=ready)
        return
    app = create_app(
        ServerConfig(
            data_dir=data_dir,
            database=database,
            admin_token=token,
            dashboard_token=viewer,
            public_dashboard=public_dashboard,
            evaluate_every_s=evaluate_every,
            gates=gates,
        )
    )
    front.run(front.FrontConfig(app, **options), on_ready=ready)


_WORKER_ENV = {
    "data": "EDGEKIT_SERVE_DATA",
    "db": "EDGEKIT_SERVE_DB",
    "token_env": "EDGEKIT_SERVE_ADMIN_TOKEN_ENV",
    "dashboard_token_env": "EDGEKIT_SERVE_DASHBOARD_TOKEN_ENV",
    "public_dashboard": "EDGEKIT_SERVE_PUBLIC_DASHBOARD",
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
    public = bool(os.environ[_WORKER_ENV["public_dashboard"]])
    viewer = None if public else dashboard_token(data_dir, os.environ[_WORKER_ENV["dashboard_token_env"]])[0]
    return create_app(
        ServerConfig(
            data_dir=data_dir,
            database=database,
            admin_token=token,
            dashboard_token=viewer,
            public_dashboard=public,
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
