"""``python -m batchrun._emulator ARGS``."""

import sys

from ._server import main

sys.exit(main())
