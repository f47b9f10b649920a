"""``python -m batchrun.emulator ARGS``."""

import sys

from batchrun.emulator.server import main

sys.exit(main())
