"""`edgekit deploy nginx-config`: the files of a production layout (nginx in front of `edgekit serve`)."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.commands._common import CommandError, emit_result, handle_errors, json_option
from edgekit.commands.serve import body_timeout_option, header_timeout_option


@click.group()
def deploy() -> None:
    """Deployment files for edgekit serve in production: nginx-config."""


@deploy.command("nginx-config")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("edgekit-data"),
    show_default=True,
    help="The server's data directory (as given to `edgekit serve --data`); nginx serves its repo/.",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="HOST:PORT",
    help="An `edgekit serve` process to proxy the API to (repeatable; default: 127.0.0.1:8080).",
)
@click.option(
    "--listen",
    default="80",
    show_default=True,
    metavar="[HOST:]PORT",
    help="Where nginx listens (plain HTTP; the file shows where TLS goes).",
)
@click.option("--server-name", default="_", show_default=True, help="nginx's server_name (_: any host name).")
@header_timeout_option(
    "Seconds a client has to send its request headers (use the value given to `edgekit serve`)."
)
@body_timeout_option(
    "Seconds a client may stall while sending a body (use the value given to `edgekit serve`)."
)
@click.option(
    "--metrics-allow",
    multiple=True,
    metavar="ADDRESS|NETWORK",
    help="Who may read /metrics through nginx besides loopback (repeatable, e.g. 10.0.0.5 or 10.0.0.0/8).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the configuration to this file (atomically) instead of stdout.",
)
@json_option
@handle_errors
def nginx_config(
    data_dir: Path,
    upstreams: tuple[str, ...],
    listen: str,
    server_name: str,
    header_timeout: float,
    body_timeout: float,
    metrics_allow: tuple[str, ...],
    output: Path | None,
    as_json: bool,
) -> None:
    """Write an nginx configuration: repo/ served as static files, the API proxied to edgekit serve.

    Devices poll the TUF metadata from nginx (and keep getting it while every server process is down);
    telemetry, the admin API, the dashboard, /healthz and /metrics go to the `--upstream` processes, which
    share one PostgreSQL database (`edgekit serve --db postgresql://...`) and one data directory.
    """
    from edgekit import __version__
    from edgekit.server.app import MAX_ADMIN_BODY
    from edgekit.server.ingest import MAX_BATCH_BYTES
    from edgekit.server.nginx_config import NginxSettings, render

    repo_dir = data_dir.resolve() / "repo"
    if not (repo_dir / "metadata" / "root.json").is_file():
        raise CommandError(
            f"{data_dir}: no TUF repository (expected {repo_dir / 'metadata' / 'root.json'})",
            code="NoRepository",
            hint=f"create it with `edgekit repo init --data {data_dir} --offline-keys DIR`, or pass the "
            "data directory of your server with --data",
        )
    settings = NginxSettings(
        repo_dir=repo_dir,
        upstreams=upstreams or ("127.0.0.1:8080",),
        listen=listen,
        server_name=server_name,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        telemetry_body_bytes=MAX_BATCH_BYTES,
        admin_body_bytes=MAX_ADMIN_BODY,
        metrics_allow=("127.0.0.1", "::1", *metrics_allow),
        version=__version__,
    )
    text = render(settings)
    if output is not None:
        from signing.atomic import atomic_write

        try:
            atomic_write(output, text.encode(), mode=0o644)
        except OSError as e:
            raise CommandError(f"{output}: cannot write the configuration ({e.strerror})") from None
    if as_json:
        emit_result(
            {
                "path": None if output is None else str(output),
                "config": text if output is None else None,
                "repo_dir": str(repo_dir),
                "upstreams": list(settings.upstreams),
                "listen": settings.listen,
                "server_name": settings.server_name,
                "metrics_allow": list(settings.metrics_allow),
            }
        )
    elif output is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {output}: check it with `nginx -t`, then reload nginx", err=True)
