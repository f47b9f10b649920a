"""A local ModelStream chat-completions emulator (``batchrun emulator``, ``--emulate``):
an HTTP server on loopback with the API's limits, faults and a billing ledger. It imports
nothing of batchrun's outside this subpackage.

with EmulatorProcess(["--rpm", "600"]) as emu:
    emu.base_url      # "http://127.0.0.1:PORT"
    emu.ledger()      # GET /emulator/ledger as a dict
    emu.reset()       # POST /emulator/reset
"""

from batchrun.emulator.app import EmulatorApp
from batchrun.emulator.config import EmulatorConfig
from batchrun.emulator.process import EmulatorProcess
from batchrun.emulator.server import main

__all__ = ["EmulatorApp", "EmulatorConfig", "EmulatorProcess", "main"]
