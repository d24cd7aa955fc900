"""Validate + repair a million rows: trainflow's tasks against a hand-written pandas script.

The table: 1,000,000 rows x 20 features (12 numeric, 8 categorical), 5% missing cells, 1% outlier
cells, one class per 20 of the other, seeded. Both sides do the same work on the same Parquet
file: check ids, labels, dtypes and categories; impute the median (numeric) and the most frequent
category; clip to 1.5 IQR beyond the quartiles; oversample to equal classes. trainflow's side
runs `validate_split` (pandera, lazy) and `repair_train` (which also writes the ledger: one row
per imputed, clipped or added value). Each side runs in its own process, twice, alternating;
the best time counts. Peak memory is the process's peak RSS during the work above what it held
before (Linux: VmHWM, reset through /proc/self/clear_refs), divided by the frame's size in memory.

    python benchmarks/repair_throughput.py [--rows N]

Last line: one JSON object with ratio (trainflow time / hand-written time), rows_per_s
(trainflow) and peak_mem_ratio (trainflow peak memory / frame size).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NUMERIC = [f"x{i:02d}" for i in range(12)]
CATEGORICAL = [f"c{i}" for i in range(8)]


def make_table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = {"id": np.arange(rows, dtype=np.int64), "label": (rng.random(rows) < 1 / 21).astype(np.int64)}
    for i, column in enumerate(NUMERIC):
        values = rng.normal(10 * i, 1 + i, rows)
        outliers = rng.random(rows) < 0.01
        values[outliers] += rng.choice([-1, 1], outliers.sum()) * 25 * (1 + i)
        values[rng.random(rows) < 0.05] = np.nan
        frame[column] = values
    for i, column in enumerate(CATEGORICAL):
        names = np.array([f"{column}_{k}" for k in range(4 + i)], dtype=object)
        values = names[rng.integers(0, len(names), rows)]
        values[rng.random(rows) < 0.05] = None
        frame[column] = pd.array(values, dtype="str")
    return pd.DataFrame(frame)


# ------------------------------------------------------------------------------ the two sides
def trainflow_side(frame: pd.DataFrame) -> pd.DataFrame:
    from tasks.config import DataConfig, OutlierConfig, RepairConfig, SchemaConfig, ValidateConfig
    from tasks.repair import repair_train
    from tasks.validate import validate_split

    data = DataConfig(modality="tabular", image_shape=None)
    spec = SchemaConfig(columns={**{c: {"dtype": "float"} for c in NUMERIC}, **{c: {"dtype": "category"} for c in CATEGORICAL}})
    valid, _, report = validate_split.fn(frame, data, [0, 1], ValidateConfig(schema=spec), None)
    assert not report.fatal and report.quarantined == 0, report.fatal
    cfg = RepairConfig(outliers=OutlierConfig(method="iqr", action="clip", threshold=1.5), imbalance="oversample",
                       duplicates="keep", conflicts="keep", drop_constant_rows=False, encode="none")
    _, repaired, ledger, _ = repair_train.fn(valid, cfg, data, spec, len(frame))
    return repaired


def handwritten_side(frame: pd.DataFrame) -> pd.DataFrame:
    # Validate: what the schema checks, written out.
    assert frame["id"].is_unique and frame["label"].notna().all() and frame["label"].isin([0, 1]).all()
    for column in NUMERIC:
        assert pd.api.types.is_float_dtype(frame[column])
    for column in CATEGORICAL:
        assert pd.api.types.is_string_dtype(frame[column])
    # Repair: median / most frequent, IQR clip, random oversampling.
    fills = {c: frame[c].median() for c in NUMERIC} | {c: frame[c].mode().iloc[0] for c in CATEGORICAL}
    frame = frame.fillna(fills)
    quartiles = frame[NUMERIC].quantile([0.25, 0.75])
    iqr = quartiles.iloc[1] - quartiles.iloc[0]
    frame[NUMERIC] = frame[NUMERIC].clip(quartiles.iloc[0] - 1.5 * iqr, quartiles.iloc[1] + 1.5 * iqr, axis=1)
    rng = np.random.default_rng(0)
    groups = frame.groupby("label").indices
    target = max(map(len, groups.values()))
    extra = np.concatenate([rng.choice(rows, target - len(rows)) for rows in groups.values()])
    return pd.concat([frame, frame.iloc[extra]], ignore_index=True)


# ------------------------------------------------------------------------------ measurement
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(side: str, path: str) -> None:
    sys.path.insert(0, str(ROOT))
    if side == "trainflow":  # imports are not part of the measured work
        import tasks.repair  # noqa: F401
        import tasks.validate  # noqa: F401
    frame = pd.read_parquet(path)
    size = int(frame.memory_usage(deep=True).sum())
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status("VmRSS:")
    start = time.perf_counter()
    out = (trainflow_side if side == "trainflow" else handwritten_side)(frame)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM:") - before
    print(json.dumps({"side": side, "seconds": seconds, "peak_bytes": peak, "frame_bytes": size, "rows_out": len(out)}))


def run(side: str, path: Path) -> dict:
    # A fixed mmap threshold makes glibc hand every large array back to the OS when it is freed, and
    # Arrow's system pool makes text columns go through the same malloc (its own pools keep freed
    # memory for a while, by timing): RSS then follows live memory, on both sides alike.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    result = subprocess.run([sys.executable, __file__, "--child", side, str(path)],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode:
        raise SystemExit(f"{side} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "table.parquet"
        make_table(args.rows).to_parquet(path)
        runs = {"trainflow": [], "handwritten": []}
        for _ in range(args.repeats):
            for side in runs:
                runs[side].append(run(side, path))
                print(f"{side}: {runs[side][-1]['seconds']:.2f} s, peak {runs[side][-1]['peak_bytes'] / 1e6:.0f} MB")
    best = {side: min(r, key=lambda r: r["seconds"]) for side, r in runs.items()}
    frame_bytes = best["trainflow"]["frame_bytes"]
    peak = {side: max(r["peak_bytes"] for r in rs) for side, rs in runs.items()}
    print(f"frame: {args.rows} rows, {frame_bytes / 1e6:.0f} MB in memory; rows out {best['trainflow']['rows_out']}")
    print(f"hand-written: {best['handwritten']['seconds']:.2f} s, peak {peak['handwritten'] / frame_bytes:.2f}x the frame")
    print(json.dumps({
        "ratio": round(best["trainflow"]["seconds"] / best["handwritten"]["seconds"], 3),
        "rows_per_s": round(args.rows / best["trainflow"]["seconds"]),
        "peak_mem_ratio": round(peak["trainflow"] / frame_bytes, 3),
        "trainflow_s": round(best["trainflow"]["seconds"], 3), "handwritten_s": round(best["handwritten"]["seconds"], 3),
        "handwritten_peak_mem_ratio": round(peak["handwritten"] / frame_bytes, 3), "rows": args.rows,
    }))


if __name__ == "__main__":
    main()
