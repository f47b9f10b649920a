"""``python -m batchrun`` is the ``batchrun`` command."""

from batchrun.cli import main

main()
