"""Scale-out example: validate a large table in row shards, in parallel, on a Dask cluster.

Reads one Parquet file (a split of data/raw/, or any table with the declared schema), cuts it
into `shards` row ranges and submits tasks/validate.py's `validate_split` for each to Prefect's
DaskTaskRunner: a local cluster by default, or an existing one (`--address tcp://scheduler:8786`)
whose workers have this project installed. Writes nothing: it returns, and publishes as a
`shard-validation` table artifact, the rows, valid rows, quarantined rows and class counts per
shard and in total.

Row-level checks (dtypes, ranges, missing values, unknown categories, image findings) shard
cleanly, so the totals equal one pass over the whole file; frame-level checks (unique ids,
class counts against thresholds) need the whole split and stay in the validate stage.

    python -m flows.shards data/raw/source/train.parquet --shards 4 [--address tcp://host:8786]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect_dask import DaskTaskRunner

from flows._stage import fails_cleanly
from tasks.config import Params, load_params
from tasks.errors import UserError
from tasks.io import load_frame
from tasks.validate import validate_split


@flow(name="validate-shards", task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1}))
@fails_cleanly
def validate_shards(params: Params, path: str, shards: int = 4) -> dict:
    frame = load_frame(Path(path))
    if shards < 1 or shards > len(frame):
        raise UserError(f"--shards: {shards} for {len(frame)} rows of {path}; use 1..{len(frame)}")
    data, cfg = params.data, params.validate_
    classes = list(params.ingest.datasets.get(Path(path).parent.name, [])) or sorted(frame[data.label].dropna().unique().tolist())
    bounds = np.linspace(0, len(frame), shards + 1, dtype=int)
    # Each shard is one task on the cluster; the frames travel to the workers in memory only.
    futures = [validate_split.with_options(name=f"validate-shard-{i}").submit(frame.iloc[lo:hi], data, classes, cfg)
               for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
    rows, counts = [], Counter()
    for i, future in enumerate(futures):
        _, _, report = future.result()
        counts.update(report.class_counts)
        rows.append({"shard": i, "rows": report.rows, "valid": report.valid, "quarantined": report.quarantined})
    total = {"shard": "total", **{k: sum(r[k] for r in rows) for k in ("rows", "valid", "quarantined")}}
    create_table_artifact([*rows, total], key="shard-validation", description=f"{path} validated in {shards} shards on Dask")
    print(f"{path}: {total['valid']} of {total['rows']} rows valid, {total['quarantined']} quarantined ({shards} shards)")
    return {"shards": rows, "total": total, "class_counts": dict(counts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a Parquet file with the declared schema")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--address", help="a running Dask scheduler (default: a local cluster of 2 workers)")
    args = parser.parse_args(argv)
    from flows._stage import run_flow

    runner = DaskTaskRunner(address=args.address) if args.address else None
    shards_flow = validate_shards.with_options(task_runner=runner) if runner else validate_shards
    try:
        params = load_params()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_flow(shards_flow, params, args.path, args.shards)


if __name__ == "__main__":
    sys.exit(main())
