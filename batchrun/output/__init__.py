"""The output table: every input row again with its answer, parsed columns, usage, cost and
status, written atomically to Parquet; and parsing an answer into typed columns.

Hands the written file to ``report`` (which reads it back) and its figures to the run's
summary.
"""
