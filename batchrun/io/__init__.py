"""Files in: finding them (local paths, ``s3://``, ``gs://`` through ``pyarrow.fs``) and
reading the input table (CSV or Parquet) as a stream of Arrow record batches.

Hands record batches and row keys to ``send`` (which builds requests from them) and the
file layer to ``output`` and ``report``.
"""
