"""The checkpoint: a SQLite file (WAL) with its schema and migrations, the answers, the
ledger of charges, the marks of finished input batches, the run lock and the rate limits a
run learned; ``JobStore`` is one view over the local and the Ray engine's files.

Hands answers and spend back to the engines, ``output`` and ``plan``; it never imports
``send``.
"""
