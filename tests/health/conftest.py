"""Health tests use the server tests' fixtures (a live server on loopback over a published repository)."""

from tests.server.conftest import deployment, postgres_url, start_server  # noqa: F401
