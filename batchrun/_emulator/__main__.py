"""``python -m batchrun._emulator ARGS``."""

import sys

from batchrun._emulator._server import main

sys.exit(main())
