"""Debian's nginx as a child process for tests and benchmarks: its own prefix, pid, logs and temp folders.

The configuration under test (`edgekit deploy nginx-config`, an http-context file) is included from a
minimal main file here, as /etc/nginx/nginx.conf includes conf.d/*.conf on Debian. Runs in the foreground
(`daemon off`), as this process's user, on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

__all__ = ["NginxProcess", "find_nginx"]

_MAIN = """\
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
daemon off;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
{temp_paths}
    include {site};
}}
"""


def find_nginx() -> str:
    """nginx's path; skips the test when it is absent, but fails under CI (.ci/run installs nginx-light)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("nginx is not installed; .ci/run installs Debian's nginx-light")
    pytest.skip("nginx is not installed (apt-get install nginx-light) and CI is not set")


def _temp_paths(nginx: str, prefix: Path) -> str:
    """A temp folder per module compiled in (the compiled-in /var/lib/nginx/... need not be writable)."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    lines = []
    for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        if module != "client_body" and f"--without-http_{module}_module" in built:
            continue
        (prefix / module).mkdir(exist_ok=True)
        lines.append(f"    {module}_temp_path {prefix / module};")
    return "\n".join(lines)


class NginxProcess:
    """nginx running `site` (an http-context file) until `stop`; `port` is where the site listens."""

    def __init__(self, site: Path, prefix: Path, port: int) -> None:
        self.nginx = find_nginx()
        self.prefix, self.port = prefix, port
        prefix.mkdir(parents=True, exist_ok=True)
        # As root the workers would switch to `nobody`, who cannot read a 0700 pytest folder.
        user = "user root;" if os.geteuid() == 0 else ""
        main = prefix / "nginx.conf"
        main.write_text(
            _MAIN.format(user=user, prefix=prefix, temp_paths=_temp_paths(self.nginx, prefix), site=site)
        )
        command = [self.nginx, "-p", str(prefix), "-c", str(main), "-e", str(prefix / "error.log")]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr}")
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def wait_ready(self, path: str, attempts: int = 200) -> None:
        """Until `path` answers (any HTTP status); bounded by `attempts` tries 0.05 s apart."""
        for _ in range(attempts):
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.process.returncode}):\n{self.error_log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not answer on port {self.port}:\n{self.error_log()}")

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown: master and its workers
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
