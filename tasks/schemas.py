"""The pandera schemas at each boundary, built from params at run time.

Validated -> Repaired -> Augmented, each stricter than the one before:
- Validated (what validate checks the raw splits against): ids unique, a label on every row, every
  declared column present and of its declared dtype (coerced: a CSV may hold "12" or 12.0; missing
  values allowed where `nullable`), and the declared values: ranges (ge/le), finite numbers,
  allowed values (isin), regex, unique, integers, categories known from train; images inside the
  pixel range.
- Repaired: what repair promised: every feature numeric and present (no missing value left),
  declared ranges still hold, indicator and one-hot columns 0/1.
- Augmented: Repaired plus an `augmented_from` lineage column.
Row-level failures (a bad value in one row) are quarantined; frame-level failures (a missing
column, a wrong dtype for a whole column) stop the stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.api.types import is_object_dtype

from tasks.config import ColumnSchema, DataConfig, SchemaConfig
from tasks.frames import SOURCE_ID

NUMERIC = ("float", "int")


def validated_schema(data: DataConfig, features: Sequence[str], classes: Sequence, spec: SchemaConfig | None = None,
                     known: Mapping[str, Sequence] | None = None) -> pa.DataFrameSchema:
    """Every declared column, dtype and value check; `known` holds train's categories for val/test."""
    spec, known = spec or SchemaConfig(), known or {}
    columns = _key_columns(data, classes)
    if data.modality == "image":
        # Hundreds of pixel columns: one vectorised frame-level check instead of a Column each
        # (5x faster); it still reports the exact (row, column, value) of every bad pixel.
        return pa.DataFrameSchema(columns, checks=[pixel_check(list(features), *data.pixel_range, nullable=True)],
                                  name="Validated")
    for feature in features:
        declared = spec.columns.get(feature, ColumnSchema())
        columns[feature] = pa.Column(_dtype(declared), nullable=declared.nullable, coerce=True, unique=declared.unique,
                                     checks=_value_checks(declared, known.get(feature)))
    return pa.DataFrameSchema(columns, name="Validated")


def repaired_schema(data: DataConfig, features: Sequence[str], classes: Sequence, spec: SchemaConfig | None = None,
                    binary: Sequence[str] = (), scaled: Sequence[str] = ()) -> pa.DataFrameSchema:
    """`binary`: columns repair made that hold 0/1 only; `scaled`: rescaled columns (ranges no longer apply)."""
    spec = spec or SchemaConfig()
    columns = _key_columns(data, classes, made_rows=True)
    checks = []
    if data.modality == "image":
        checks.append(pixel_check(list(features), *data.pixel_range, nullable=False))
    else:
        binary = set(binary)
        for feature in features:
            declared = spec.columns.get(feature)
            value_checks = [pa.Check.isin([0.0, 1.0])] if feature in binary else \
                _range_checks(declared) if declared is not None and declared.dtype in NUMERIC and feature not in scaled else []
            columns[feature] = pa.Column(float, nullable=False, coerce=True, checks=value_checks)
    return pa.DataFrameSchema(columns, checks=checks, name="Repaired")


def augmented_schema(data: DataConfig, features: Sequence[str], classes: Sequence) -> pa.DataFrameSchema:
    lineage = {"augmented_from": pa.Column("Int64", nullable=True)}
    return repaired_schema(data, features, classes).add_columns(lineage).set_name("Augmented")


def _key_columns(data: DataConfig, classes: Sequence, made_rows: bool = False) -> dict[str, pa.Column]:
    """`made_rows`: repair and augment add rows (synthetic, augmented) that no file gave an id to."""
    return {
        data.id: pa.Column(int, unique=True, nullable=False),
        SOURCE_ID: pa.Column(str, unique=not made_rows, nullable=made_rows, required=False),
        data.label: pa.Column(float, coerce=True, nullable=False, checks=_FINITE) if data.task == "regression"
        else pa.Column(checks=pa.Check.isin(list(classes), error="known class"), nullable=False),
    }


_FINITE = pa.Check(lambda s: ~np.isinf(s), element_wise=False, name="finite", error="finite")


def _dtype(column: ColumnSchema):
    # Integers are held as floats so that a missing value stays representable until repair fills it;
    # the "integer" check below keeps 2.5 out of an int column.
    return float if column.dtype in NUMERIC else str


def _range_checks(column: ColumnSchema) -> list[pa.Check]:
    checks = []
    if column.ge is not None:
        checks.append(pa.Check.ge(column.ge))
    if column.le is not None:
        checks.append(pa.Check.le(column.le))
    return checks


def _value_checks(column: ColumnSchema, known: Sequence | None) -> list[pa.Check]:
    checks = _range_checks(column)
    if column.dtype in NUMERIC:  # an infinite value would turn a scaler's mean, and then training, to NaN
        checks.append(_FINITE)
    if column.dtype == "int":
        checks.append(pa.Check(lambda s: s.isna() | (s == s.round()), element_wise=False, name="integer", error="integer"))
    if column.isin is not None:
        allowed = [str(v) for v in column.isin] if column.dtype not in NUMERIC else list(column.isin)
        checks.append(pa.Check.isin(allowed))
    elif known is not None:
        checks.append(pa.Check.isin(list(known), name="known_category", error="known category (seen in train)"))
    if column.regex is not None:
        checks.append(pa.Check.str_matches(rf"(?:{column.regex})\Z"))  # the whole value must match
    return checks


def pixel_check(features: list[str], low: float, high: float, nullable: bool) -> pa.Check:
    def cells_ok(frame: pd.DataFrame) -> pd.DataFrame:
        block = frame[features]
        if any(is_object_dtype(dtype) or isinstance(dtype, pd.StringDtype) for dtype in block.dtypes):
            block = block.apply(pd.to_numeric, errors="coerce")  # only when some column holds text
        values = block.to_numpy(dtype=float)
        was_missing = frame[features].isna().to_numpy()
        ok = (values >= low) & (values <= high)  # NaN compares False: non-numbers fail here
        ok |= was_missing if nullable else False
        out = pd.DataFrame(True, index=frame.index, columns=frame.columns)
        out[features] = ok
        return out

    label = f"numeric in_range({low:g}, {high:g})" + ("" if nullable else ", not null")
    return pa.Check(cells_ok, name=label, error=label)
