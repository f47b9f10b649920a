"""``--disagreements PATH``: a review queue of the rows where the variants disagree with
each other (or with the gold column), every variant's label side by side.

The file has the input columns, the gold column, then ``COLUMN[VARIANT]`` for each
compared column and variant; ``.csv`` writes CSV, anything else Parquet. Rows are
written chunk by chunk as they are compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batchrun._errors import JobError
from batchrun.compare.metrics import Codes
from batchrun.compare.source import Layout


class DisagreementWriter:
    def __init__(
        self,
        path: str,
        layout: Layout,
        gold: str | None,
        columns: Sequence[str],
        variants: Sequence[str],
    ) -> None:
        self.path, self.gold, self.columns, self.variants = path, gold, columns, variants
        self.inputs = [*layout.inputs, *([gold] if gold and gold not in layout.inputs else [])]
        fields: list[pa.Field[Any]] = [layout.schema.field(name) for name in self.inputs]
        fields += [
            pa.field(f"{column}[{variant}]", layout.schema.field(column).type)
            for column in columns
            for variant in variants
        ]
        self.schema = pa.schema(fields)
        self.rows = 0
        try:
            if path.lower().endswith(".csv"):
                self._writer: pq.ParquetWriter | pacsv.CSVWriter = pacsv.CSVWriter(
                    path, self.schema
                )
            else:
                self._writer = pq.ParquetWriter(path, self.schema)
        except (OSError, pa.ArrowException) as exc:
            raise JobError(f"--disagreements: cannot write {path}: {exc}") from None

    def add(
        self,
        chunk: Mapping[str, pa.Table],
        codes: Mapping[str, Mapping[str, Codes]],
        golds: Mapping[str, Codes],
    ) -> None:
        """Write the rows of ``chunk`` where any compared column's labels differ."""
        first = chunk[self.variants[0]]
        differ = np.zeros(first.num_rows, dtype=bool)
        for column in self.columns:
            stacked = np.stack([codes[v][column] for v in self.variants])
            differ |= (stacked != stacked[0]).any(axis=0)
            if column in golds:
                truth = golds[column]
                differ |= (truth >= 0) & (stacked != truth).any(axis=0)
        if not differ.any():
            return
        mask = pa.array(differ)
        arrays = [first.column(name).filter(mask) for name in self.inputs]
        arrays += [
            chunk[variant].column(column).filter(mask)
            for column in self.columns
            for variant in self.variants
        ]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += int(differ.sum())

    def close(self) -> None:
        self._writer.close()
