"""``batchrun compare``: one job's outputs (its variants) against a gold column or a
reference variant, and what each costs.

Takes output Parquet files; reads them in aligned chunks (``compare.source``), sums
confusion matrices (``compare.metrics``) into accuracy or agreement, Cohen's kappa,
per-class precision/recall/F1 and the cheapest variant within N points of the best
(``compare.compute``); hands on a ``Comparison``, rendered by ``compare.render`` (text) or
``compare.page`` (one HTML page) and
written row by row to a review queue of disagreements (``compare.disagree``).
"""
