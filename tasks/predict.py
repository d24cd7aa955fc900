"""Predict: score new rows with a trained model through the pipeline's own checks and repairs.

flows/predict.py opens the files and writes the outputs; this module holds what happens to a chunk
of rows on the way. Nothing is re-implemented, so nothing can drift apart from training:
- rows are read as ingest reads a file (its checks: UTF-8, workbooks and archives named, ragged
  lines, a repeated header), `chunk_rows` at a time; ids as ingest gives them (`with_integer_ids`),
  numbered on across chunks when the file has none;
- validate's `validate_split` checks them against the declared schema with train's categories:
  bad rows go to the quarantine with their reason; a frame-level problem (a declared column
  missing, an undeclared one with extra_columns: forbid, a whole column of text) is a UserError;
- the repairer fitted on train repairs them with `transform` (never fit), every change a ledger row;
- the features are read as evaluate reads them (`features_array`), in the column order of the
  repaired splits the model was trained and evaluated on; the model gives class probabilities
  (the softmax of its logits) or values.
Every id of a chunk comes out predicted or quarantined: checked here, or it is a bug.
Which model runs, and how: tasks/champion.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import DataConfig, IngestConfig, Params, SourceConfig
from tasks.drift import DriftCounter
from tasks.errors import UserError
from tasks.frames import SOURCE_ID, feature_columns, features_array
from tasks.ingest import (
    big_integers_as_text,
    csv_header,
    first_bad_byte,
    refuse_repeated_header,
    sniff,
    strict_csv,
    with_integer_ids,
)
from tasks.repair.ledger import SCHEMA as LEDGER_SCHEMA
from tasks.repair.repairer import Repairer
from tasks.validate import REASON, sentinels_to_missing, validate_split

KINDS = {".csv": "csv", ".gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
PLACEHOLDER = 0  # new rows carry no label: validate and repair read one, so each row gets this, dropped after
FILE, PREDICTED, REASON_OUT = "file", "predicted", "reason"


# ------------------------------------------------------------------------------------- reading
def input_files(path: Path) -> list[Path]:
    """The file, or the folder's CSV/Parquet files in name order."""
    if not path.exists():
        raise UserError(f"{path}: input not found")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in KINDS and not p.name.startswith("."))
        if not files:
            raise UserError(f"{path}: folder holds no .csv, .csv.gz or .parquet file")
        return files
    if path.suffix.lower() not in KINDS:
        raise UserError(f"{path}: predict reads .csv, .csv.gz or .parquet files (or a folder of them)")
    return [path]


def read_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The file's rows, `rows` at a time, with ingest's checks and words for a file that is not a table."""
    kind = KINDS[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    compression = sniff(path, kind)  # a workbook, an archive, UTF-16, NUL bytes, another separator: one line each
    chunks = _parquet_chunks(path, rows) if kind == "parquet" else _csv_chunks(path, rows, compression)
    seen = 0
    for chunk in chunks:
        seen += len(chunk)
        if len(chunk):
            yield big_integers_as_text(chunk)
    if not seen:
        raise UserError(f"{path}: the file has a header but no rows")


def _parquet_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=rows)
        while (batch := next(batches, None)) is not None:
            yield batch.to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _csv_chunks(path: Path, rows: int, compression: str | None) -> Iterator[pd.DataFrame]:
    try:
        header = csv_header(path, compression)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text ({first_bad_byte(path, compression)}); re-save it as UTF-8") from None
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise UserError(f"{path}: duplicate column names {duplicated}")
    reader = None
    while True:
        try:
            with strict_csv(path, compression, "the file has no columns"):  # ingest's checks, on each chunk as it parses
                reader = reader or pd.read_csv(path, encoding="utf-8", compression=compression, index_col=False,
                                               chunksize=rows)
                chunk = next(reader, None)
        except OSError as e:
            raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
        if chunk is None:
            return
        refuse_repeated_header(chunk, path)  # the reader numbers rows on across chunks: its line numbers hold
        yield chunk


def with_ids(chunk: pd.DataFrame, data: DataConfig, offset: int, path: Path) -> pd.DataFrame:
    """Ids as ingest gives them: the file's integer ids as they are; otherwise row numbers, counted on
    from `offset` across chunks (text ids kept in source_id)."""
    ids = chunk.get(data.id)
    numbered = ids is None or not pd.api.types.is_integer_dtype(ids) or ids.dtype == np.uint64
    kind = KINDS[path.suffix.lower()]
    frame, _ = with_integer_ids(chunk, data, IngestConfig(source=SourceConfig(kind=kind, path=path)), str(path))
    if numbered:
        frame[data.id] += offset
    return frame


# ------------------------------------------------------------------------------------ a chunk
@dataclass
class Scorer:
    """What scoring a chunk needs: loaded once by the flow."""

    params: Params
    repairer: Repairer  # fitted on train (data/repaired/<dataset>/repairer.json)
    known: dict[str, list]  # train's categories per category column (validate's `known` for val/test)
    columns: list[str]  # the model's input columns, in the repaired splits' order
    classes: list
    regression: bool
    run: Callable[[np.ndarray], np.ndarray]  # features -> probabilities (N, K) or values (N,)
    drift: DriftCounter

    def predictions_schema(self) -> pa.Schema:
        label = pa.float64() if self.regression else pa.array(np.asarray(self.classes)).type
        probs = [] if self.regression else [(f"prob_{c}", pa.float32()) for c in self.classes]
        return pa.schema([(self.params.data.id, pa.int64()), (SOURCE_ID, pa.string()), (FILE, pa.string()),
                          (PREDICTED, label), *probs])

    def quarantine_schema(self) -> pa.Schema:
        return pa.schema([(self.params.data.id, pa.int64()), (SOURCE_ID, pa.string()), (FILE, pa.string()),
                          (REASON_OUT, pa.string()), *[(c, pa.string()) for c in self.repairer.features_]])


@dataclass
class Scored:
    predictions: pa.Table
    quarantine: pa.Table
    ledger: pd.DataFrame
    rows: int
    reasons: Counter = field(default_factory=Counter)  # "column: check" -> rows
    ignored: list[str] = field(default_factory=list)  # columns read but not used (the label, extra columns)


def score_chunk(s: Scorer, chunk: pd.DataFrame, path: Path, offset: int) -> Scored:
    data, features = s.params.data, s.repairer.features_
    missing = [c for c in features if c not in chunk.columns]
    if missing:
        raise UserError(f"{path}: column '{missing[0]}' is missing: the model was trained with it "
                        f"({len(missing)} column(s) missing)")
    frame = with_ids(chunk, data, offset, path)
    ignored = [data.label] if data.label in frame.columns else []  # a new row's label is not read
    extra = [c for c in feature_columns(frame, data) if c not in features]
    keys = [c for c in (data.id, SOURCE_ID) if c in frame.columns]
    frame = frame[keys + features + extra].assign(**{data.label: PLACEHOLDER})  # train's column order
    s.drift.add_rows(sentinels_to_missing(frame, features, s.params.validate_.schema_)[0])  # every row read, as validate sees it

    valid, quarantine, report = validate_split.fn(frame, data, [PLACEHOLDER], s.params.validate_, s.known)
    if report.fatal:
        raise UserError(f"{path}: {report.fatal[0]}")
    reasons = Counter({f"{c['column']}: {c['check']}": c["failures"] for c in report.checks})
    repaired, ledger, _ = s.repairer.transform_with_findings(valid.drop(columns=extra), path.name)
    dropped = ledger.loc[(ledger["column"] == "*") & ledger["new"].isna()]
    if len(dropped):  # a repair that drops rows (repair.missing strategy drop): they are quarantined, not lost
        why = dropped.groupby("row_id", sort=False)["rule"].first().astype("str")
        gone = valid[valid[data.id].isin(why.index)].copy()
        gone[REASON] = "repair: " + why.reindex(gone[data.id]).to_numpy()
        quarantine = pd.concat([quarantine, gone], ignore_index=True)
        reasons.update(("repair: " + why).value_counts().to_dict())
    made = feature_columns(repaired, data)
    if sorted(made) != sorted(s.columns):
        raise RuntimeError(f"repair made columns {sorted(set(made) ^ set(s.columns))[:5]} unlike the training "
                           f"columns: this is a bug")
    outputs = s.run(features_array(repaired[s.columns], data)) if len(repaired) else None
    predicted = outputs if s.regression or outputs is None else outputs.argmax(axis=1)
    if predicted is not None:
        s.drift.add_predicted(predicted)

    n = len(repaired)
    columns = {data.id: repaired[data.id].to_numpy(np.int64), SOURCE_ID: _text(repaired.get(SOURCE_ID), n),
               FILE: pa.array([path.name] * n, pa.string())}
    if s.regression:
        columns[PREDICTED] = np.zeros(0) if outputs is None else outputs.astype(np.float64)
    else:
        columns[PREDICTED] = np.asarray(s.classes)[predicted] if n else np.asarray(s.classes)[:0]
        columns.update({f"prob_{c}": (outputs[:, i] if n else np.zeros(0)).astype(np.float32)
                        for i, c in enumerate(s.classes)})
    predictions = pa.table(columns, schema=s.predictions_schema())
    held = {data.id: quarantine[data.id].to_numpy(np.int64), SOURCE_ID: _text(quarantine.get(SOURCE_ID), len(quarantine)),
            FILE: pa.array([path.name] * len(quarantine), pa.string()), REASON_OUT: _text(quarantine[REASON], len(quarantine)),
            **{c: _text(quarantine[c], len(quarantine)) for c in features}}
    quarantined = pa.table(held, schema=s.quarantine_schema())

    scored = np.concatenate([columns[data.id], held[data.id]])
    if len(scored) != len(frame) or not np.array_equal(np.sort(scored), np.sort(frame[data.id].to_numpy(np.int64))):
        raise RuntimeError(f"{path}: {len(frame)} rows in, {n} predicted + {len(quarantine)} quarantined out: a bug")
    return Scored(predictions, quarantined, ledger, len(frame), reasons, ignored + extra)


def _text(values, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, pa.string())
    series = pd.Series(values).astype("object")
    return pa.array(series.where(series.notna(), None).map(lambda v: None if v is None else str(v)), pa.string())


# ------------------------------------------------------------------------------------ the tally
@dataclass
class Tally:
    """What the run's summary says: rows in, predicted, quarantined (and why), repairs, files."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    predicted: int = 0
    quarantined: int = 0
    chunks: int = 0
    reasons: Counter = field(default_factory=Counter)
    repairs: Counter = field(default_factory=Counter)
    ignored: set[str] = field(default_factory=set)

    def add(self, scored: Scored) -> None:
        self.chunks += 1
        self.rows += scored.rows
        self.predicted += scored.predictions.num_rows
        self.quarantined += scored.quarantine.num_rows
        self.reasons.update(scored.reasons)
        if len(scored.ledger):
            self.repairs.update(scored.ledger["rule"].astype("str").value_counts().to_dict())
        self.ignored.update(scored.ignored)

    def as_dict(self) -> dict:
        return {"files": self.files, "rows": self.rows, "predicted": self.predicted, "quarantined": self.quarantined,
                "unaccounted": self.rows - self.predicted - self.quarantined, "chunks": self.chunks,
                "quarantine_reasons": dict(self.reasons.most_common()), "repairs": dict(self.repairs.most_common()),
                "ignored_columns": sorted(self.ignored)}


def ledger_table(ledger: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(ledger, schema=LEDGER_SCHEMA, preserve_index=False)


def summary_markdown(summary: dict, drift_line: str, drift_rows: list[dict]) -> str:
    lines = ["# Predictions", "", f"Model: {summary['model']['why']}; runtime {summary['model']['runtime']}", "",
             f"Input: `{summary['input']}` ({len(summary['files'])} file(s)): **{summary['rows']}** rows, "
             f"**{summary['predicted']}** predicted, **{summary['quarantined']}** quarantined, "
             f"{summary['unaccounted']} unaccounted", ""]
    if summary["quarantine_reasons"]:
        lines += ["| quarantined for | rows |", "|---|---:|"]
        lines += [f"| {why} | {n} |" for why, n in summary["quarantine_reasons"].items()] + [""]
    if summary["repairs"]:
        lines += ["| repair (ledger rule) | cells |", "|---|---:|"]
        lines += [f"| {rule} | {n} |" for rule, n in summary["repairs"].items()] + [""]
    if summary["ignored_columns"]:
        lines += [f"Columns read but not used: {', '.join(summary['ignored_columns'])}", ""]
    lines += ["## Drift", "", drift_line, "", "| feature | measure | value | threshold | drift |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['feature']} | {r['measure']} | {_number(r['value'])} | {r['threshold']:g} | {r['drift']} |"
              for r in drift_rows]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
