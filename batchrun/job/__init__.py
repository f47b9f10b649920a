"""The job file: the raw TOML document (``--set``, ``--var``, ``${...}``), its keys checked
against their types and defaults, prompt templates, and the frozen ``Job`` they make.

Hands a validated ``Job`` to every later stage; imports nothing of batchrun's but the
error tree and the records in ``batchrun._types``.
"""
