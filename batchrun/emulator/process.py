"""``EmulatorProcess``: the emulator in a child process, for tests and ``--emulate``.

The child binds port 0 and prints its address; the parent reads that line, then
waits for one answer from ``GET /v1/models``. The child runs in its own session
(a Ctrl-C on the terminal reaches only the parent, whose ``with`` block stops
it) and exits by itself when its stdin reaches EOF, which happens however the
parent dies, SIGKILL included.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from batchrun.emulator.config import READY_PREFIX

_PROBE_KEY = "sk-emulator-probe"


class EmulatorProcess:
    """A running emulator on a free loopback port.

    with EmulatorProcess(["--rpm", "600", "--seed", "7"]) as emu:
        client = openai.OpenAI(base_url=emu.base_url + "/v1", api_key="sk-test")
        ...
        assert emu.ledger()["requests_billed"] == 1
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        quiet: bool = False,
    ) -> None:
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.quiet = quiet
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``"http://127.0.0.1:PORT"`` (append ``/v1`` for an OpenAI client)."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not running")
        return self._base_url

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> Self:
        """Start the child and return once it answers; raises RuntimeError if it cannot."""
        if self._proc is not None:
            raise RuntimeError("the emulator is already running")
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._proc = self._spawn()
            self._base_url = self._read_address(deadline)
            self._client = httpx.Client(base_url=self._base_url, timeout=30.0)
            self._wait_until_serving(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def ledger(self, *, full: bool = False) -> dict[str, Any]:
        """``GET /emulator/ledger``; ``full`` adds ``billed_by_body_hash``."""
        response = self._http().get("/emulator/ledger", params={"full": "1"} if full else None)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset(self) -> None:
        """``POST /emulator/reset``: ledger, prompt cache, rate windows, fault sequence."""
        self._http().post("/emulator/reset").raise_for_status()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``. Safe to call twice."""
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self._proc = self._proc, None
        self._base_url = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start-up steps ----------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "batchrun.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--parent-watch",
            *self.args,
        ]
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,  # held open, never written: EOF tells the child we died
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if self.quiet else None,
            start_new_session=True,
        )

    def _read_address(self, deadline: float) -> str:
        """The base URL from the child's first stdout line."""
        assert self._proc is not None and self._proc.stdout is not None
        line = _read_line(self._proc, deadline)
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"unexpected emulator output: {line!r}")
        return line.removeprefix(READY_PREFIX).strip()

    def _wait_until_serving(self, deadline: float) -> None:
        # The socket listens before the line is printed, so the kernel queues this
        # probe until uvicorn takes it: one request, no retry loop.
        headers = {"authorization": f"Bearer {_PROBE_KEY}"}
        try:
            self._http().get("/v1/models", headers=headers, timeout=_left(deadline))
        except httpx.TransportError as exc:
            raise RuntimeError(f"the emulator did not answer in time: {exc}") from None

    def _http(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("the emulator is not running")
        return self._client


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.01)


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """One line from the child's stdout, without blocking past ``deadline``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            if not selector.select(_left(deadline)):
                if time.monotonic() >= deadline:
                    raise RuntimeError("the emulator did not start in time")
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the emulator exited with status {proc.wait()}")
            buffer += chunk
    return buffer.split(b"\n", 1)[0].decode()
