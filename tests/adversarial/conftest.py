"""Adversarial tests: each finding of the trusted-telemetry review as a test against the real server
(uvicorn on loopback, SQLite and PostgreSQL) or the real device runtime.

The server fixtures (`deployment`, `start_server`, `postgres_url`, `fleet`) are the ones the server tests use.
"""

from tests.server.conftest import deployment, postgres_url, start_server  # noqa: F401
from tests.server.fleet import fleet  # noqa: F401
