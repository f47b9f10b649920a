"""``batchrun report``: output files aggregated into usage and cost (by day, model, any
column), the ``--since``/``--until`` range and ``--pricing`` re-pricing, rendered as a text
table, CSV, JSON, Markdown or one self-contained HTML page.

The last stage: it reads what ``output`` wrote and hands text to the command line.
"""
