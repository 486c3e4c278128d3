"""The app under real gunicorn, started with the Procfile's own command on a loopback port.

One launcher for the tests (``tests/test_soak.py``, ``test_faults.py``, ``test_memory.py``) and
the tools (``tools.bench``, ``tools.soak``, ``tools.stress``).
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from agegroup.config import PROJECT_ROOT, Settings
from testsupport.memory import children_by_parent
from testsupport.uploads import MULTIPART


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def procfile_command(port: int, procfile: Path = PROJECT_ROOT / "Procfile") -> list[str]:
    """The Procfile's ``web`` command bound to ``127.0.0.1:port``, run by this Python's gunicorn."""
    for line in procfile.read_text().splitlines():
        if line.startswith("web:"):
            words = shlex.split(line.removeprefix("web:"))
            break
    else:
        raise ValueError(f"{procfile} has no web: line")
    words = [w.replace("0.0.0.0", "127.0.0.1").replace("$PORT", str(port)) for w in words]
    if words[0] != "gunicorn":
        raise ValueError(f"{procfile}'s web command does not start gunicorn: {words[0]}")
    return [sys.executable, "-m", "gunicorn", *words[1:]]


def render_env(path: Path = PROJECT_ROOT / "render.yaml", limits: bool = False) -> dict[str, str]:
    """render.yaml's envVars (``- key: NAME`` / ``value: ...`` pairs), without PYTHON_VERSION.

    The per-client limits are off unless ``limits``: a load tool's clients all come from one
    address, so the limits would count them as one visitor (tools/abuse.py measures them).
    """
    env: dict[str, str] = {}
    key = None
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if match := re.match(r"-\s*key:\s*(\S+)", line):
            key = match.group(1)
        elif (match := re.match(r"value:\s*(.+)", line)) and key:
            env[key] = match.group(1).strip().strip("\"'")
            key = None
    env.pop("PYTHON_VERSION", None)
    if not limits:
        env["AGE_RATE_LIMIT"] = "off"
    return env


def settings_for(env: dict[str, str]) -> Settings:
    """The server's settings under ``env``, read the way the app reads them."""
    with mock.patch.dict(os.environ, env):
        return Settings.from_env()


class GunicornServer:
    """The app under gunicorn.conf.py on a free loopback port, as in production.

    ``model_path`` is served from its own folder; ``env`` adds to (or overrides) this
    process's environment; ``extra_args`` go after the Procfile's command.
    """

    def __init__(
        self,
        model_path: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.command = procfile_command(self.port) + list(extra_args or [])
        self.env = {
            **os.environ,
            "AGE_MODEL_PATH": str(model_path),
            "AGE_MODEL_DIR": str(model_path.parent),
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.cold_start_s = 0.0

    def start(self, wait_s: float = 180.0) -> GunicornServer:
        """Start gunicorn and wait until ``/healthz`` answers (200, or 503 without a model)."""
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.wait_until_serving(wait_s)
        except BaseException:
            self.stop()  # never leave a server behind that nobody will stop
            raise
        self.cold_start_s = time.perf_counter() - started
        return self

    def wait_until_serving(self, wait_s: float) -> int:
        """Wait until /healthz answers (200 or 503); returns its status."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _, _ = self.request("GET", "/healthz", timeout=5)
                return status
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"gunicorn did not answer within {wait_s:.0f} s:\n{self.log_tail()}")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 60,
        conn: http.client.HTTPConnection | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request (a body is sent as ``testsupport.uploads``' multipart); on ``conn`` if
        given (kept open: keep-alive), else on a connection of its own."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": MULTIPART} if body else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            if own:
                conn.close()

    def worker_pids(self) -> list[int]:
        """The worker processes: children of the gunicorn master."""
        assert self.process is not None
        return sorted(children_by_parent().get(self.process.pid, []))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """The first 20 lines of the server's log that show an error or a traceback."""
        return [
            line
            for line in self.log_text().splitlines()
            if "Traceback" in line or "ERROR" in line or "[CRITICAL]" in line
        ][:20]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
