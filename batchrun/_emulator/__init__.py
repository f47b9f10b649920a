"""A local ModelStream chat-completions emulator (``batchrun emulator``).

with EmulatorProcess(["--rpm", "600"]) as emu:
    emu.base_url      # "http://127.0.0.1:PORT"
    emu.ledger()      # GET /emulator/ledger as a dict
    emu.reset()       # POST /emulator/reset
"""

from batchrun._emulator._app import EmulatorApp
from batchrun._emulator._config import EmulatorConfig
from batchrun._emulator._process import EmulatorProcess
from batchrun._emulator._server import main

__all__ = ["EmulatorApp", "EmulatorConfig", "EmulatorProcess", "main"]
