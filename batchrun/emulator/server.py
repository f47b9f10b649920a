"""``main(argv)``: parse the flags, bind the socket, run uvicorn.

The bound address is printed as the first stdout line before serving, so a
parent that asked for port 0 learns the port; the socket already listens, so
connections made after that line wait in the backlog instead of failing.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Sequence

from batchrun.emulator.app import EmulatorApp
from batchrun.emulator.config import READY_PREFIX, EmulatorConfig, parse_config

_BACKLOG = 2048


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until interrupted; returns the exit status (2 for bad flags)."""
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    serve(config)
    return 0


def serve(config: EmulatorConfig) -> None:
    """Serve ``config`` in this process, on this thread, until shut down."""
    import uvicorn  # here, so importing the package for EmulatorProcess stays light

    sock = bind(config.host, config.port)
    print(READY_PREFIX + base_url(config.host, sock.getsockname()[1]), flush=True)
    if config.parent_watch:
        _exit_when_parent_dies()
    server = uvicorn.Server(
        uvicorn.Config(
            EmulatorApp(config),
            access_log=False,
            log_level="warning",
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            backlog=_BACKLOG,
            # Stalled requests must not hold a shutdown for --stall-s.
            timeout_graceful_shutdown=1,
        )
    )
    server.run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    return sock


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _exit_when_parent_dies() -> None:
    """The parent holds our stdin open and never writes; EOF means it is gone."""

    def wait_for_eof() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=wait_for_eof, name="parent-watch", daemon=True).start()
