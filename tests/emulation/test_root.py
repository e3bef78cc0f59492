"""The arm64 root: a complete build of the current recipe that trusts the host's extra CA certificates."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.emulation.root import HOST_CA_DIR, RECIPE, STAMP, ensure_root, is_complete


def test_the_root_is_a_complete_build_of_the_current_recipe_and_is_reused(arm64_root: Path) -> None:
    assert is_complete(arm64_root)
    stamp = arm64_root / STAMP
    before = stamp.stat().st_mtime_ns
    assert ensure_root(arm64_root) == arm64_root
    assert stamp.stat().st_mtime_ns == before
    assert RECIPE["arch"] == "arm64" and (arm64_root / "usr" / "bin" / "python3").exists()


def test_the_roots_ca_bundle_holds_the_hosts_extra_certificates(arm64_root: Path) -> None:
    host_certs = sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []
    if not host_certs:
        pytest.skip(f"this host has no extra CA certificates in {HOST_CA_DIR}")
    bundle = (arm64_root / "etc" / "ssl" / "certs" / "ca-certificates.crt").read_text()
    for cert in host_certs:
        pem = "".join(cert.read_text().split())  # compare without line breaks
        body = pem.split("-----")[2]  # between BEGIN CERTIFICATE and END CERTIFICATE
        assert len(body) > 100 and body in "".join(bundle.split()), f"{cert.name} is not trusted in the root"
