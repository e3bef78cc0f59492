"""The server front: uvicorn's HTTP protocol with read deadlines and a connection cap (slowloris).

uvicorn bounds how long an idle keep-alive connection may stay (`timeout_keep_alive`), but not how long a
client may take to send a request's headers or body: a connection that trickles one byte of a request line
per second holds a file descriptor forever. With the default limit of 1,024 descriptors, about a thousand
such connections stop the server from accepting anything (devices polling `timestamp.json` included).
`limit_concurrency` does not help: it answers 503 once the connection count is reached, so the polls would
be refused instead of served. What this module adds, as a subclass of uvicorn's own protocol (the parser,
flow control and ASGI cycle stay uvicorn's):

- a header deadline: a request's headers must be complete within `header_timeout_s` of the connection
  opening (or of the previous response on a keep-alive connection), however slowly the bytes arrive, and
  within `max_header_bytes`;
- a body deadline: once the headers are in, the whole body must arrive within `body_timeout_s`;
- a read deadline for answers: a client that stops reading an answer (uvicorn's writes paused) has
  `body_timeout_s` to take the next part of it;
- a connection cap below the file limit: when a new connection would pass it, the oldest connection that
  is waiting for a client (headers first, then bodies, then answers the client is not reading) is closed,
  so a flood of slow clients evicts itself and a request that arrives whole is always read. A connection
  whose request is complete and whose answer is being taken is never evicted.

`raise_file_limit` lifts the soft RLIMIT_NOFILE to the hard one at start, and `connection_cap` keeps room
under the limit for the accept burst (bounded by the listen backlog), database files and worker threads.

Use: `run(FrontConfig(app, front=FrontLimits(...), host=..., port=...))`. The protocol is a module-level
class reading its limits from the config, so `workers > 1` (the app as an import string) works as well:
uvicorn pickles the config into each worker process, and each worker keeps its own connection registry.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

__all__ = [
    "FrontConfig",
    "FrontLimits",
    "FrontProtocol",
    "connection_cap",
    "counters",
    "raise_file_limit",
    "run",
]

# Descriptors kept free under the file limit besides the accept burst: the listening socket, the event
# loop, SQLite files (database, WAL, shared memory) for each worker thread's connection, log files.
_RESERVED_FDS = 160


@dataclass(frozen=True)
class FrontLimits:
    """How long and how many: the front's bounds on clients. Durations in seconds."""

    header_timeout_s: float = 10.0  # request line and headers, complete, from connect / previous response
    body_timeout_s: float = 60.0  # the whole body, from the end of the headers
    max_header_bytes: int = 64 << 10  # bytes of request line and headers
    max_connections: int = 10_000  # also bounded by the file limit (connection_cap)
    backlog: int = 256  # listen backlog: also the largest burst of connections accepted at once

    def __post_init__(self) -> None:
        if not (self.header_timeout_s > 0 and self.body_timeout_s > 0):
            raise ValueError("header and body timeouts must be positive")
        if self.max_header_bytes < 1024 or self.max_connections < 1 or self.backlog < 1:
            raise ValueError("max_header_bytes >= 1024, max_connections >= 1 and backlog >= 1 are required")


def raise_file_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard limit; return (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # a container may refuse; the cap below adapts to what we have
            pass
    return soft, hard


def connection_cap(limits: FrontLimits, file_limit: int | None = None) -> int:
    """The most connections to hold open: `max_connections`, less if the file limit needs room."""
    if file_limit is None:
        file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if file_limit == resource.RLIM_INFINITY:
        return limits.max_connections
    # Up to two accept bursts can land before the protocols of the first one run and evict.
    room = file_limit - 2 * limits.backlog - _RESERVED_FDS
    return max(16, min(limits.max_connections, room))


# Phases in which a connection waits for its client, in the order they are evicted.
_WAITING = ("headers", "body", "stalled")


class _Registry:
    """Open connections of one server, and the ones waiting for their client in the order they began."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self.evicted = 0
        self.timed_out = 0
        self.waiting: dict[str, OrderedDict[Any, None]] = {phase: OrderedDict() for phase in _WAITING}

    def oldest_waiting(self) -> Any:
        for phase in _WAITING:  # an idle or half-sent request goes first, an unread answer last
            if self.waiting[phase]:
                return next(iter(self.waiting[phase]))
        return None


_REGISTRIES: weakref.WeakSet[_Registry] = weakref.WeakSet()  # this process's servers, for /metrics


def counters() -> dict[str, int]:
    """This process's front counters: open connections, evicted and timed-out clients (for /metrics)."""
    registries = list(_REGISTRIES)
    return {
        "connections": sum(r.open for r in registries),
        "evicted": sum(r.evicted for r in registries),
        "timed_out": sum(r.timed_out for r in registries),
    }


def _base_protocol() -> Any:
    try:  # uvicorn[standard] brings httptools; h11 is uvicorn's own fallback
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - depends on the installed extras
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


class FrontConfig(uvicorn.Config):
    """uvicorn's Config with the front's limits; the HTTP protocol and listen backlog follow from them."""

    def __init__(self, app: Any, *, front: FrontLimits | None = None, **kwargs: Any) -> None:
        self.front = front or FrontLimits()
        kwargs.setdefault("http", FrontProtocol)
        kwargs.setdefault("backlog", self.front.backlog)
        super().__init__(app, **kwargs)


def _registry(config: Any, server_state: Any) -> _Registry:
    """The registry of one server (one per uvicorn Server, so one per worker process)."""
    registry: _Registry | None = getattr(server_state, "edgekit_front", None)
    if registry is None:
        limits = getattr(config, "front", None) or FrontLimits()
        registry = _Registry(connection_cap(limits))
        server_state.edgekit_front = registry
        _REGISTRIES.add(registry)
    return registry


class FrontProtocol(_base_protocol()):  # type: ignore[misc]
    """uvicorn's HTTP protocol with header/body deadlines and eviction of the oldest waiting connection."""

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        self._front_limits: FrontLimits = getattr(config, "front", None) or FrontLimits()
        self._front_registry = _registry(config, server_state)
        self._front_phase: str | None = None
        self._front_generation = 0
        self._front_timer: asyncio.TimerHandle | None = None
        self._front_header_bytes = 0
        self._front_counted = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        registry = self._front_registry
        self._front_counted = True
        registry.open += 1
        self._front_enter("headers")
        while registry.open > registry.cap:
            victim = registry.oldest_waiting()
            if victim is None or victim is self:
                break  # everyone else is being answered: let them finish (the cap has headroom)
            registry.evicted += 1
            victim._front_drop(abort=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front_forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._front_refresh()
        if self._front_phase == "headers":
            self._front_header_bytes += len(data)
            if self._front_header_bytes > self._front_limits.max_header_bytes:
                self._front_drop(abort=False)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._front_refresh()

    def pause_writing(self) -> None:  # the client does not take the answer as fast as it is written
        super().pause_writing()
        self._front_refresh()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._front_refresh()

    # -- phases: headers (waiting for a request), body (for its body), busy (being answered), stalled ----
    def _front_refresh(self) -> None:
        cycle = self.cycle
        if self.transport is None or self.transport.is_closing():
            phase = None
        elif self.flow is not None and self.flow.write_paused:
            phase = "stalled"
        elif cycle is None or cycle.response_complete:
            phase = "headers"
        elif cycle.more_body:
            phase = "body"
        else:
            phase = "busy"
        if phase != self._front_phase:
            self._front_enter(phase)

    def _front_enter(self, phase: str | None) -> None:
        self._front_unlist()
        self._front_phase = phase
        self._front_generation += 1
        if phase in _WAITING:
            if phase == "headers":
                self._front_header_bytes = 0
            self._front_registry.waiting[phase][self] = None
            limits = self._front_limits
            timeout = limits.header_timeout_s if phase == "headers" else limits.body_timeout_s
            self._front_timer = self.loop.call_later(timeout, self._front_expire, self._front_generation)

    def _front_expire(self, generation: int) -> None:
        if generation == self._front_generation and self._front_phase in _WAITING:
            self._front_registry.timed_out += 1
            # close() would first flush what is buffered, which a client that stopped reading never takes
            self._front_drop(abort=self._front_phase == "stalled")

    def _front_unlist(self) -> None:
        if self._front_timer is not None:
            self._front_timer.cancel()
            self._front_timer = None
        for waiting in self._front_registry.waiting.values():
            waiting.pop(self, None)

    def _front_forget(self) -> None:
        self._front_unlist()
        self._front_phase = None
        if self._front_counted:
            self._front_counted = False
            self._front_registry.open -= 1

    def _front_drop(self, *, abort: bool) -> None:
        """Close now; the descriptor counts as free at once (the close completes on the loop)."""
        self._front_forget()
        if abort:
            self.transport.abort()
        else:
            self.transport.close()


class _ReadyServer(uvicorn.Server):
    """uvicorn's Server that reports its listening address once it accepts connections."""

    def __init__(self, config: FrontConfig, on_ready: Callable[[str, int], None] | None) -> None:
        super().__init__(config=config)
        self._on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None and self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_ready(str(host), int(port))


def run(config: FrontConfig, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Serve until interrupted, as `uvicorn.run` does: one process, or `config.workers` processes sharing
    one listening socket (then the app must be an import string).

    `on_ready(host, port)` is called once the socket listens (the port the OS chose for port 0).

    Raises:
        SystemExit: the server did not start (uvicorn has logged why).
    """
    from uvicorn.supervisors import Multiprocess

    server = _ReadyServer(config, on_ready)
    try:
        if config.workers > 1:
            if not isinstance(config.app, str):
                raise ValueError("workers > 1 needs the app as an import string ('module:factory')")
            sock = config.bind_socket()
            if on_ready is not None:
                # Listening now (the workers listen on it again): a connection made right after the ready
                # line waits in the backlog until a worker accepts it, instead of being refused.
                sock.listen(config.backlog)
                host, port = sock.getsockname()[:2]
                on_ready(str(host), int(port))
            Multiprocess(config, sockets=[sock]).run()
        else:
            config.load_app()
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if config.uds and os.path.exists(config.uds):
            os.remove(config.uds)
    if config.workers == 1 and not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE
