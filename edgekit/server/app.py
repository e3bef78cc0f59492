"""`edgekit serve`: the ASGI app (FastAPI on uvicorn).

    GET  /repo/...                      the TUF repository as static files (metadata and .ekb targets)
    POST /v1/telemetry                  device batches (per-device bearer token; idempotent by batch id)
    POST /v1/admin/devices              register a device, returns its token         (admin bearer token)
    GET  /v1/admin/rollouts             rollouts with their latest decisions         (admin)
    POST /v1/admin/rollouts             start a rollout                              (admin)
    GET  /v1/admin/rollouts/{id}        one rollout and its decision log             (admin)
    POST /v1/admin/rollouts/{id}/{act}  pause | resume | abort | promote             (admin)
    POST /v1/admin/evaluate             run the gates now                            (admin)
    GET  /v1/dashboard                  the dashboard's data        (dashboard or admin bearer token)
    GET  /dashboard  /static/...        the dashboard page, script and style (static: they hold no data)
    GET  /healthz  /metrics  /openapi.json

Admin and dashboard requests are authenticated (`Authorization: Bearer`, nothing else) before their body is
read; every request body is size-capped before it is read whole, every JSON body is schema-checked, every
answer carries a strict Content-Security-Policy and no-framing headers (guard.py), and no endpoint returns a
traceback.

The dashboard page is public and empty: its script takes the read-only token from the address's fragment
(`/dashboard#token=...`, which browsers never send to a server), keeps it in the tab's sessionStorage,
removes it from the address bar, and sends it as a bearer token to /v1/dashboard. The admin token reads the
dashboard too; `public_dashboard` (`edgekit serve --public-dashboard`, for a lab) drops the token.

The repository directory is plain static files: any web server or CDN can serve the same folder, so device
polling need not touch this process at all. In front of the app, `edgekit serve` runs uvicorn with the
protocol of front.py: header and body deadlines and a connection cap under the file limit (slowloris).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from edgekit.rollout.gates import GateConfig
from edgekit.rollout.plan import PlanError
from edgekit.server import front, ingest
from edgekit.server.guard import BearerRule, BearerTokens, SecurityHeaders
from edgekit.server.health import HealthCheck
from edgekit.server.metrics import Metrics
from edgekit.server.rollouts import ACTIONS, RolloutError, RolloutService, UnknownRolloutError
from edgekit.server.storage import Database
from edgekit.server.tuf_repo import TufRepository

__all__ = ["ServerConfig", "create_app"]

MAX_ADMIN_BODY = 64 << 10  # bytes
STATIC_DIR = Path(__file__).parent / "static"  # the dashboard's page, script and style (package data)
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """What `create_app` needs. Durations in seconds."""

    data_dir: Path
    database: Database
    admin_token: str
    dashboard_token: str | None = None  # read-only; None: only the admin token reads the dashboard
    public_dashboard: bool = False  # UNSAFE outside a lab: the dashboard's data without any token
    evaluate_every_s: float = 60.0  # 0 disables the background evaluator
    refresh_metadata_every_s: float = 3600.0
    gates: GateConfig = field(default_factory=GateConfig)
    clock: Callable[[], float] = time.time


class DeviceRegistration(BaseModel):
    """A device to register."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    hardware_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")


class ShadowRequest(BaseModel):
    """A rollout's shadow trial (the plan's `shadow` key; the plan contract checks the values)."""

    stages: list[int] = Field(min_length=1, max_length=10)
    sample: float = Field(default=0.1, gt=0, le=1)
    max_cpu: float = Field(default=0.2, gt=0, le=1)


class RolloutRequest(BaseModel):
    """A rollout to start."""

    model: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    channel: str = Field(default="stable", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    target_version: str = Field(min_length=1, max_length=64)
    baseline_version: str = Field(min_length=1, max_length=64)
    stages: list[int] = Field(default=[1, 5, 25, 100], min_length=1, max_length=10)
    control: bool = True
    deadline_hours: float = Field(default=72.0, gt=0, le=24 * 90)
    shadow: ShadowRequest | None = None
    # devices per arm every stage before the last must draw among the registered devices (0: any draw)
    min_arm_devices: int = Field(default=0, ge=0, le=100_000)


class _BodyLimit:
    """ASGI middleware: refuse bodies above a cap (413) before the app reads them."""

    def __init__(self, app: Any, limits: Callable[[str], int], on_reject: Callable[[str], None]) -> None:
        self.app = app
        self.limits = limits
        self.on_reject = on_reject

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        limit = self.limits(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            self.on_reject(scope["path"])
            await JSONResponse({"error": f"body larger than {limit} bytes"}, status_code=413)(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            self.on_reject(scope["path"])
            await JSONResponse({"error": f"body larger than {limit} bytes"}, status_code=413)(
                scope, receive, send
            )


class _TooLarge(Exception):
    pass


class MetadataCache:
    """TUF metadata files kept in memory, re-read when their (mtime, size, inode) changes."""

    _NAME = re.compile(r"(?:[0-9]{1,10}\.)?[a-z][a-z0-9_-]{0,63}\.json")

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._entries: dict[str, tuple[tuple[int, int, int], bytes, str]] = {}

    def get(self, name: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of a metadata file, or None if it does not exist or the name is not metadata."""
        if not self._NAME.fullmatch(name):
            return None
        path = self._folder / name
        try:
            info = os.stat(path)  # follows the root.json symlink, as a static server would
        except OSError:
            return None
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        cached = self._entries.get(name)
        if cached is None or cached[0] != key:
            try:
                body = path.read_bytes()
            except OSError:
                return None
            cached = (key, body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
            if len(self._entries) > 4096:
                self._entries.clear()
            self._entries[name] = cached
        return cached[1], cached[2]


class _App(FastAPI):
    """FastAPI whose every answer, the error handler's 500 included, carries the security headers."""

    def build_middleware_stack(self) -> Any:
        # Starlette's ServerErrorMiddleware sits outside user middleware: wrap the whole stack instead.
        return SecurityHeaders(super().build_middleware_stack())


def create_app(config: ServerConfig) -> FastAPI:
    """Build the app for one data directory and database."""
    if not config.admin_token:
        raise ValueError("ServerConfig.admin_token is empty: every admin request would be refused")
    db = config.database
    repo = TufRepository(config.data_dir, clock=config.clock)
    service = RolloutService(db, repo, config.gates, config.clock)
    metrics = Metrics()
    metrics.describe("edgekit_telemetry_batches_total", "counter", "Telemetry batches by result.")
    metrics.describe("edgekit_telemetry_events_total", "counter", "Telemetry events stored.")
    metrics.describe("edgekit_http_requests_total", "counter", "HTTP requests by route and status.")
    metrics.describe("edgekit_gate_decisions_total", "counter", "Gate decisions by outcome.")
    metrics.describe("edgekit_rollouts", "gauge", "Rollouts by state.")
    metrics.describe(
        "edgekit_gate_skipped_rows_total",
        "counter",
        "Stored telemetry rows an evaluation could not aggregate (skipped, shown in its decision).",
    )
    metrics.describe("edgekit_front_connections", "gauge", "Open client connections (this process).")
    metrics.describe(
        "edgekit_front_evicted_total", "counter", "Waiting clients closed to stay under the cap."
    )
    metrics.describe("edgekit_front_timed_out_total", "counter", "Clients closed for slow headers or body.")
    stop = threading.Event()

    def count(decision: Any) -> None:
        metrics.inc("edgekit_gate_decisions_total", outcome=decision.outcome)
        if decision.skipped_rows:
            metrics.inc("edgekit_gate_skipped_rows_total", decision.skipped_rows)

    def background() -> None:
        last_refresh = 0.0
        while not stop.wait(max(1.0, config.evaluate_every_s)):
            try:
                for _, decision in service.evaluate():
                    count(decision)
                if time.monotonic() - last_refresh > config.refresh_metadata_every_s:
                    repo.refresh_timestamp()
                    last_refresh = time.monotonic()
            except Exception:
                metrics.inc("edgekit_background_errors_total")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        thread = None
        if config.evaluate_every_s > 0:
            thread = threading.Thread(target=background, name="edgekit-gates", daemon=True)
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    app = _App(
        title="edgekit rollout server",
        version="1",
        lifespan=lifespan,
        description="TUF repository, telemetry ingest, phased rollouts with statistical gates.",
    )

    def rejected(path: str) -> None:
        if path == "/v1/telemetry":
            ingest.REJECTIONS["oversized"] += 1

    app.add_middleware(
        _BodyLimit,
        on_reject=rejected,
        limits=lambda path: ingest.MAX_BATCH_BYTES if path == "/v1/telemetry" else MAX_ADMIN_BODY,
    )
    # Added after the body limit, so it runs before it: a request is authenticated before its body is read.
    readers = (config.admin_token, *((config.dashboard_token,) if config.dashboard_token else ()))
    rules = [BearerRule("/v1/admin", (config.admin_token,), "admin token")]
    if config.public_dashboard:
        _log.warning("UNSAFE: the dashboard and its data are served without a token (public_dashboard)")
    else:
        rules.append(BearerRule("/v1/dashboard", readers, "dashboard token"))

    def unauthenticated(prefix: str) -> None:
        kind = "admin" if prefix == "/v1/admin" else "dashboard"
        metrics.inc(f"edgekit_{kind}_rejected_total")

    app.add_middleware(BearerTokens, rules=rules, on_reject=unauthenticated)
    health = HealthCheck(db, config.clock)
    app.state.health = health
    ingestor = ingest.Ingestor(db, repo, metrics)
    app.state.ingest = ingestor  # for tests and tools (limits, known bundles)
    app.state.service = service  # for in-process tools and tests (replay, benchmarks)
    app.state.database = db
    repo_dir = config.data_dir / "repo"
    repo_dir.mkdir(parents=True, exist_ok=True)
    metadata = MetadataCache(repo_dir / "metadata")

    @app.get("/repo/metadata/{name}", include_in_schema=False)
    async def tuf_metadata(name: str, if_none_match: str | None = Header(default=None)) -> Response:
        # Every device polls timestamp.json: serve metadata from memory (re-read when the file changes)
        # instead of the generic static handler (measured: 391 -> 2,560 polls/s, bench/README.md).
        found = metadata.get(name)
        if found is None:
            return JSONResponse({"error": "no such metadata"}, status_code=404)
        body, etag = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if if_none_match == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    app.mount("/repo", StaticFiles(directory=repo_dir), name="repo")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()][:5]
        return JSONResponse({"error": "invalid request", "problems": problems}, status_code=400)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, error: ClientDisconnect) -> Response:
        # The client left mid-body (or the front closed a slow one): nobody reads this, and it is no error.
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:  # never a traceback to clients
        metrics.inc("edgekit_internal_errors_total")
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        status, body = health.answer()
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        for reason, count in ingest.REJECTIONS.items():
            metrics.set("edgekit_telemetry_rejected", count, reason=reason)
        counts: dict[str, int] = {}
        for plan in service.plans():
            counts[plan.state] = counts.get(plan.state, 0) + 1
        for state in ("running", "paused", "halted", "rolled_back", "complete"):
            metrics.set("edgekit_rollouts", counts.get(state, 0), state=state)
        seen = front.counters()
        if any(seen.values()):  # served through the front (edgekit serve), not a bare uvicorn
            metrics.set("edgekit_front_connections", seen["connections"])
            metrics.set("edgekit_front_evicted_total", seen["evicted"])
            metrics.set("edgekit_front_timed_out_total", seen["timed_out"])
        return metrics.render()

    @app.post("/v1/telemetry")
    async def telemetry(request: Request, authorization: str | None = Header(default=None)) -> JSONResponse:
        body = await request.body()
        # CPU and database work off the event loop, so polls are not stalled behind a batch.
        try:
            outcome = await run_in_threadpool(ingestor.ingest, body, authorization, config.clock())
        except Exception as e:  # answered 500 by `crashed`; /healthz reports it until a write succeeds
            health.write_failed(e)
            raise
        if outcome.status >= 500:
            health.write_failed(f"ingest answered {outcome.status}: {outcome.body}")
        elif outcome.status == 200:
            health.write_succeeded()
        result = {200: "stored", 409: "duplicate", 429: "rate-limited"}.get(outcome.status, "rejected")
        metrics.inc("edgekit_telemetry_batches_total", result=result)
        if outcome.status == 200:
            metrics.inc("edgekit_telemetry_events_total", outcome.body["stored"])
        return JSONResponse(outcome.body, status_code=outcome.status, headers=outcome.headers)

    @app.post("/v1/admin/devices")  # admin: BearerTokens
    def register(device: DeviceRegistration) -> dict[str, str]:
        token = ingest.register_device(db, device.device_id, device.hardware_id, config.clock())
        return {"device_id": device.device_id, "token": token}

    def describe(plan: Any, limit: int = 50) -> dict[str, Any]:
        from edgekit.server.dashboard import label_free_status  # health, shadow, thresholds, downloads

        return {
            "plan": plan.to_dict(),
            "stage_percent": plan.stage_percent,
            "decisions": service.decisions(plan.rollout_id, limit),
            **label_free_status(db, service, plan, config.clock()),
        }

    @app.get("/v1/admin/rollouts")  # admin: BearerTokens
    def rollouts() -> list[dict[str, Any]]:
        return [describe(p, 5) for p in service.plans()]

    @app.post("/v1/admin/rollouts")  # admin: BearerTokens
    def start(request: RolloutRequest) -> dict[str, Any]:
        try:
            plan, cohorts = service.start(
                request.model,
                request.channel,
                request.target_version,
                request.baseline_version,
                stages=tuple(request.stages),
                control=request.control,
                deadline_hours=request.deadline_hours,
                shadow=None if request.shadow is None else request.shadow.model_dump(),
                min_arm_devices=request.min_arm_devices,
            )
        except (RolloutError, PlanError) as e:
            raise HTTPException(409, str(e)) from e
        # the arm sizes drawn, and a warning when a stage cannot reach what these gates need
        return {**describe(plan), "cohorts": cohorts.to_dict(config.gates)}

    @app.get("/v1/admin/rollouts/{rollout_id}")  # admin: BearerTokens
    def rollout(rollout_id: str) -> dict[str, Any]:
        try:
            return describe(service.plan(rollout_id), 500)
        except RolloutError as e:
            raise HTTPException(404, str(e)) from e

    @app.post("/v1/admin/rollouts/{rollout_id}/{action}")  # admin: BearerTokens
    def act(rollout_id: str, action: Literal["pause", "resume", "abort", "promote"]) -> dict[str, Any]:
        try:
            return describe(service.act(rollout_id, action))
        except UnknownRolloutError as e:
            raise HTTPException(404, str(e)) from e
        except RolloutError as e:
            raise HTTPException(409, str(e)) from e

    @app.post("/v1/admin/evaluate")  # admin: BearerTokens
    def evaluate_now() -> list[dict[str, Any]]:
        results = service.evaluate()
        for _, decision in results:
            count(decision)
        return [
            {
                "rollout_id": plan.rollout_id,
                "state": plan.state,
                "stage_percent": plan.stage_percent,
                "decision": decision.to_dict(),
            }
            for plan, decision in results
        ]

    @app.get("/v1/dashboard")  # dashboard or admin token: BearerTokens
    def dashboard_data() -> JSONResponse:
        from edgekit.server.dashboard import dashboard_data as collect

        return JSONResponse(collect(db, service), headers={"Cache-Control": "no-store"})

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    assert set(ACTIONS) == {"pause", "resume", "abort", "promote"}
    return app
