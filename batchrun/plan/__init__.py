"""``batchrun plan``: one counting pass over the input and, with ``--pilot``, a few sampled
rows through the real pipeline, to say what a job will send, cost and take before anything
is sent.

Hands a printable plan to the command line.
"""
