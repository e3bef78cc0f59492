"""An nginx configuration for `edgekit serve` in production: `repo/` as static files, the API proxied.

    settings = NginxSettings(repo_dir=Path("/srv/edgekit-data/repo"), upstreams=("127.0.0.1:8080",))
    text = render(settings)        # an http-context file: /etc/nginx/conf.d/edgekit.conf on Debian

The layout: nginx serves the TUF repository (`DATA/repo/`, plain files, see `tuf_repo`) itself, so the
metadata every device polls is answered at nginx speed and keeps being answered when every server process
is down; everything else (telemetry ingest, device registration, the admin API, the dashboard, /healthz,
/metrics, /openapi.json) is proxied to one or more `edgekit serve` processes on one database. Pure: text in,
text out; `edgekit deploy nginx-config` validates the inputs and writes the file.

Caching follows the repository's names (consistent snapshots): `timestamp.json` and `root.json` change in
place and are revalidated on every use; `N.<role>.json` and the hash-named targets
(`<dir>/<sha256>.<name>`: bundles, deltas, rollout plans) never change once written and are immutable. An
error answer (a device asks for the next root, `N+1.root.json`, which usually does not exist yet) is never
cacheable, or a cache would hide the next root once it is published.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError

__all__ = [
    "IMMUTABLE_METADATA",
    "IMMUTABLE_TARGET",
    "MUTABLE_METADATA",
    "NginxConfigError",
    "NginxSettings",
    "parse_address",
    "render",
]

# URL paths under /repo/ by cacheability (nginx regular expressions; the names tuf_repo writes).
MUTABLE_METADATA = r"^/repo/metadata/(timestamp|root)\.json$"
IMMUTABLE_METADATA = r"^/repo/metadata/[0-9]+\.[a-z][a-z0-9_-]*\.json$"
IMMUTABLE_TARGET = r"^/repo/targets/.+/[0-9a-f]{64}\.[^/]+$"
IMMUTABLE_MAX_AGE_S = 365 * 86_400  # seconds: one year, the longest lifetime HTTP caches honour
_UNSAFE_PATH = frozenset('"\\$;{}')  # an nginx string cannot hold them safely ($ expands a variable)
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_SERVER_NAME = re.compile(r"[A-Za-z0-9*_.-]{1,253}")  # one name, `*.example.org` or `_`


class NginxConfigError(EdgekitError):
    """An input to the nginx configuration is malformed (the message names the option and the fix)."""


@dataclass(frozen=True, kw_only=True)
class NginxSettings:
    """What the configuration needs. Durations in seconds, sizes in bytes.

    Attributes:
        repo_dir: absolute path of the data directory's `repo/` (served as static files).
        upstreams: `HOST:PORT` of each `edgekit serve` process (`[v6]:PORT` for IPv6).
        listen: nginx's `listen` value, `PORT` or `HOST:PORT`.
        server_name: nginx's `server_name` (`_`: any name).
        header_timeout_s: `edgekit serve --header-timeout`: a client's request line and headers.
        body_timeout_s: `edgekit serve --body-timeout`: a client's body, and a stalled answer.
        telemetry_body_bytes: the largest telemetry batch the server takes (`MAX_BATCH_BYTES`).
        admin_body_bytes: the largest body of any other request the server takes (`MAX_ADMIN_BODY`).
        metrics_allow: addresses or networks allowed to read /metrics through nginx.
        connect_timeout_s: how long nginx waits to connect to one upstream before trying the next.
        upstream_timeout_s: how long an upstream may take to answer (a large batch on a busy database).
    """

    repo_dir: Path
    upstreams: tuple[str, ...]
    listen: str = "80"
    server_name: str = "_"
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    telemetry_body_bytes: int = 1 << 20
    admin_body_bytes: int = 64 << 10
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    connect_timeout_s: float = 2.0
    upstream_timeout_s: float = 60.0
    version: str = field(default="", compare=False)  # edgekit's version, for the header comment

    def __post_init__(self) -> None:
        if not self.repo_dir.is_absolute():
            raise NginxConfigError(f"repo_dir {self.repo_dir}: nginx needs an absolute path")
        unsafe = sorted({c for c in str(self.repo_dir) if c in _UNSAFE_PATH or not c.isprintable()})
        if unsafe:  # the path is written into the configuration, quoted: these would change its meaning
            raise NginxConfigError(
                f"--data {self.repo_dir.parent}: the path holds {unsafe!r}, which an nginx configuration "
                "cannot quote; move the data directory to a plainer path"
            )
        if not self.upstreams:
            raise NginxConfigError("no upstream: give --upstream HOST:PORT once per edgekit serve process")
        for upstream in self.upstreams:
            parse_address(upstream, option="--upstream", need_host=True)
        parse_address(self.listen, option="--listen", need_host=False)
        if not _SERVER_NAME.fullmatch(self.server_name):
            raise NginxConfigError(
                f"--server-name {self.server_name!r}: one host name (letters, digits, '.', '-', '*'), or _"
            )
        for value in self.metrics_allow:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise NginxConfigError(
                    f"--metrics-allow {value!r}: expected an address or a network (10.0.0.0/8, ::1)"
                ) from None
        for name in ("header_timeout_s", "body_timeout_s", "connect_timeout_s", "upstream_timeout_s"):
            if not 0 < getattr(self, name) <= 86_400:
                raise NginxConfigError(f"{name} must be in (0, 86400] seconds")
        if self.telemetry_body_bytes < 1024 or self.admin_body_bytes < 1024:
            raise NginxConfigError("body caps must be at least 1024 bytes")


def parse_address(value: str, *, option: str, need_host: bool) -> tuple[str | None, int]:
    """`HOST:PORT`, `[v6]:PORT` or (when `need_host` is false) `PORT` -> (host or None, port).

    Raises:
        NginxConfigError: malformed, or the port is outside 1..65535.
    """
    host: str | None
    if value.startswith("["):
        inside, sep, port_text = value[1:].partition("]:")
        host = inside if sep else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            host = ""
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host if _HOST.fullmatch(host) else ""
    else:
        host, port_text = None, value
    shape = "HOST:PORT" if need_host else "PORT or HOST:PORT"
    if host == "" or (host is None and need_host) or not port_text.isdigit():
        raise NginxConfigError(f"{option} {value!r}: expected {shape} (IPv6: [::1]:8080)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise NginxConfigError(f"{option} {value!r}: the port must be in 1..65535")
    return host, port


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


def _server_lines(upstreams: Sequence[str]) -> str:
    # max_fails=1: one failed connection takes a server out for fail_timeout; the request itself goes on
    # to the next server (proxy_next_upstream), so a dead process costs one refused connect, not an error.
    return "\n".join(f"    server {u} max_fails=1 fail_timeout=10s;" for u in upstreams)


def render(settings: NginxSettings) -> str:
    """The configuration text (http context: an `upstream`, two `map`s and one `server`)."""
    s = settings
    tries = len(s.upstreams)
    allow = "\n".join(f"        allow {a};" for a in s.metrics_allow)
    header = f" (edgekit {s.version})" if s.version else ""
    return _TEMPLATE.format(
        header=header,
        servers=_server_lines(s.upstreams),
        listen=s.listen,
        server_name=s.server_name,
        header_timeout=_seconds(s.header_timeout_s),
        body_timeout=_seconds(s.body_timeout_s),
        admin_body=s.admin_body_bytes,
        telemetry_body=s.telemetry_body_bytes,
        repo_root=s.repo_dir.parent,
        repo_dir=s.repo_dir,
        mutable=MUTABLE_METADATA,
        immutable_metadata=IMMUTABLE_METADATA,
        immutable_target=IMMUTABLE_TARGET,
        max_age=IMMUTABLE_MAX_AGE_S,
        connect_timeout=_seconds(s.connect_timeout_s),
        upstream_timeout=_seconds(s.upstream_timeout_s),
        tries=tries,
        retry_window=_seconds(s.connect_timeout_s * tries + s.upstream_timeout_s * tries),
        metrics_allow=allow,
    )


_TEMPLATE = """\
# nginx in front of edgekit serve, written by `edgekit deploy nginx-config`{header}.
# An http-context file: on Debian put it in /etc/nginx/conf.d/edgekit.conf, then `nginx -t` and reload.
# The nginx worker user (Debian: www-data) must be able to read {repo_dir}.
#
#   /repo/...  the TUF repository, served by nginx from disk (devices poll it; no server process involved)
#   /metrics   loopback (and --metrics-allow) only
#   the rest   proxied to the edgekit serve processes below (telemetry, admin API, dashboard, /healthz)

upstream edgekit_serve {{
{servers}
    # Idle connections to the servers are reused; closed before uvicorn's own 5 s keep-alive timeout, so
    # nginx never sends a request on a connection the server is closing.
    keepalive 16;
    keepalive_timeout 4s;
}}

# Cache lifetimes of repository answers. Names that carry a version or a hash never change once
# written (consistent snapshots); an error (e.g. the next root, which does not exist yet) is never cached.
map $status $edgekit_immutable {{
    200 "public, max-age={max_age}, immutable";
    206 "public, max-age={max_age}, immutable";
    304 "public, max-age={max_age}, immutable";
    default "no-store";
}}
map $status $edgekit_revalidate {{
    200 "no-cache";
    304 "no-cache";
    default "no-store";
}}

server {{
    listen {listen};
    server_name {server_name};
    server_tokens off;

    # TLS: devices send their bearer tokens in headers; terminate TLS here on any network you do not
    # control. For example (certificate paths are yours):
    #   listen 443 ssl;
    #   http2 on;                     # nginx >= 1.25.1; older: listen 443 ssl http2;
    #   ssl_certificate     /etc/ssl/certs/rollouts.example.pem;
    #   ssl_certificate_key /etc/ssl/private/rollouts.example.key;
    # and redirect plain http for the API (devices then use https:// URLs).

    # The same deadlines as edgekit serve --header-timeout / --body-timeout. nginx reads a request whole
    # before it passes it on (proxy_request_buffering on), so a slow client ties up nginx, not a server
    # process. nginx's body and send timeouts bound the gap between two reads or writes, not the total.
    client_header_timeout {header_timeout};
    client_body_timeout {body_timeout};
    send_timeout {body_timeout};
    # Request bodies: the server's own caps (413 above them, as the server answers).
    client_max_body_size {admin_body};

    # ---- the TUF repository: static files ----------------------------------------------------------
    location ^~ /repo/ {{
        root "{repo_root}";
        sendfile on;
        tcp_nopush on;
        types {{ application/json json; }}
        default_type application/octet-stream;
        # Devices ask for the next root (N+1.root.json) on every refresh: a 404 is normal, not an error.
        log_not_found off;
        # Temporaries of atomic writes (.name.random.tmp, .incoming-*) are never served.
        location ~ /\\. {{
            return 404;
        }}
        location ~ "{mutable}" {{
            add_header Cache-Control $edgekit_revalidate always;
        }}
        location ~ "{immutable_metadata}" {{
            add_header Cache-Control $edgekit_immutable always;
        }}
        location ~ "{immutable_target}" {{
            add_header Cache-Control $edgekit_immutable always;
        }}
        add_header Cache-Control $edgekit_revalidate always;
    }}

    # ---- the API: proxied to the edgekit serve processes -------------------------------------------
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    # Only the scheme is passed on (uvicorn trusts it from loopback), so redirects keep https. No
    # X-Forwarded-For: edgekit serve never uses a client's address (limits are per device token).
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_connect_timeout {connect_timeout};
    proxy_send_timeout {upstream_timeout};
    proxy_read_timeout {upstream_timeout};
    # A dead or unreachable server: the request goes to the next one. nginx never resends a POST that
    # reached a server unless told to (below, for telemetry only).
    proxy_next_upstream error timeout;
    proxy_next_upstream_tries {tries};
    proxy_next_upstream_timeout {retry_window};

    # Telemetry ingest: batches up to the contract's size. Resending a batch is safe, so a POST whose
    # server died mid-request goes to the next one: a batch is stored in one transaction keyed by its
    # batch id, so a batch the dead server committed is answered 409 (the device takes it as an
    # acknowledgement), and one it had not committed was rolled back with its connection and is stored.
    location = /v1/telemetry {{
        client_max_body_size {telemetry_body};
        proxy_next_upstream error timeout non_idempotent;
        proxy_pass http://edgekit_serve;
    }}

    # Prometheus counters of ONE server process (each keeps its own): scrape each process on its own
    # port for the full picture; through nginx only from these addresses.
    location = /metrics {{
{metrics_allow}
        deny all;
        proxy_pass http://edgekit_serve;
    }}

    # Device registration and the admin API (/v1/admin/...), the dashboard (/dashboard, /static/,
    # /v1/dashboard), /healthz and /openapi.json: bearer tokens are checked by the server.
    location / {{
        proxy_pass http://edgekit_serve;
    }}
}}
"""
