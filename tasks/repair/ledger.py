"""The repair ledger: one row per change (split, row id, column, old value, new value, rule).

Built as Arrow tables, because a million-row repair writes a million ledger rows: the split,
column and rule are dictionary-encoded (a few distinct strings), old/new values are Arrow strings
cast in C++ (no Python loop over cells). `to_frame` hands pandas a categorical/string frame that
Parquet stores compactly. Conventions: a dropped row is (column "*", old "row", new null); an added
row (an oversampled copy or a synthetic one) is (column "*", old = the id it copies or null,
new "row").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

LEDGER_COLUMNS = ["split", "row_id", "column", "old", "new", "rule"]
_DICT = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema([("split", _DICT), ("row_id", pa.int64()), ("column", _DICT), ("old", pa.string()),
                    ("new", pa.string()), ("rule", _DICT)])


def _repeat(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.string()))


def as_text(values) -> pa.Array:
    """Numbers or strings (NaN/None -> null) as an Arrow string array, without a Python loop for numbers."""
    if isinstance(values, pa.Array):
        return values.cast(pa.string())
    values = np.asarray(values)
    if values.dtype.kind in "fiub":
        return pa.array(values, from_pandas=True).cast(pa.string())
    return pa.array(pd.Series(values, dtype="object").where(pd.notna(values), None).astype(object), type=pa.string())


def text(value: str, n: int) -> pa.Array:
    return _repeat(value, n).cast(pa.string())


def nulls(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def cells(split: str, ids: np.ndarray, column_index: np.ndarray, names: Sequence[str], old: pa.Array, new: pa.Array,
          rule: str) -> pa.Table:
    """Cell changes: `column_index` points into `names`; old/new are Arrow string arrays."""
    column = pa.DictionaryArray.from_arrays(pa.array(np.asarray(column_index, np.int32)), pa.array(list(map(str, names))))
    n = len(ids)
    return pa.table([_repeat(split, n), pa.array(np.asarray(ids, np.int64)), column, old, new, _repeat(rule, n)],
                    schema=SCHEMA)


def per_column_values(column_index: np.ndarray, values: Sequence) -> pa.Array:
    """One value per column (a fill value, a bound), repeated for each cell: a take, not a loop."""
    per_column = as_text(np.asarray(values, float)) if _numeric(values) else as_text(np.asarray(values, dtype=object))
    return pa.compute.take(per_column, pa.array(np.asarray(column_index, np.int32)))


def rows(split: str, ids: np.ndarray, rule: str, added_from: np.ndarray | None = None) -> pa.Table:
    """Whole rows: dropped (added_from None), or added (copies of `added_from`, or synthetic if it is empty)."""
    n = len(ids)
    if added_from is None:
        old, new = text("row", n), nulls(n)
    else:
        old = as_text(added_from) if len(added_from) else nulls(n)
        new = text("row", n)
    return pa.table([_repeat(split, n), pa.array(np.asarray(ids, np.int64)), _repeat("*", n), old, new, _repeat(rule, n)],
                    schema=SCHEMA)


def to_frame(parts: Sequence[pa.Table]) -> pd.DataFrame:
    table = pa.concat_tables([p for p in parts if p.num_rows]) if any(p.num_rows for p in parts) else SCHEMA.empty_table()
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Ledgers of several splits as one (through Arrow, so the categoricals stay categorical)."""
    return to_frame([pa.Table.from_pandas(f, schema=SCHEMA, preserve_index=False) for f in frames])


def unaccounted(input_ids: np.ndarray, output_ids: np.ndarray, quarantined_ids: np.ndarray, ledger: pd.DataFrame) -> np.ndarray:
    """Input ids that are in no output, no quarantine and not dropped in the ledger: must be empty."""
    dropped = ledger.loc[(ledger["column"] == "*") & ledger["new"].isna(), "row_id"].to_numpy()
    seen = np.concatenate([np.asarray(output_ids), np.asarray(quarantined_ids), dropped]).astype(np.int64)
    return np.setdiff1d(np.asarray(input_ids, np.int64), seen)


def _numeric(values: Sequence) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)
