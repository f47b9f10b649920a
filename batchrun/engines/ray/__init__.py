"""The Ray engine: one job across a Ray cluster, each worker running the same pipeline on a
batch; a coordinator actor holds the shared pace, slots and budget, claims dedupe across
workers, and its own start-up and signal handling.

Imports the local engine's parts; nothing outside imports it but the runner, lazily (Ray is
an optional extra).
"""
