"""Stage ingest: source -> data/raw/<dataset>/{train,val,test}.parquet (split once, seeded)."""

from __future__ import annotations

from prefect import flow, task

from flows._stage import RAW, REPORTS, fails_cleanly, run_stage
from tasks.config import Params
from tasks.ingest import carve_and_split, read_source
from tasks.io import save_frame, save_json


@task(retries=2, retry_delay_seconds=[1, 3])  # reading a source is I/O: retry transient failures
def load_source(params: Params):
    return read_source(params.ingest.source, params.data)


@flow(name="ingest")
@fails_cleanly
def ingest(params: Params) -> dict:
    frame = load_source(params)
    datasets = carve_and_split(frame, params.ingest, params.data)
    summary = {}
    for name, splits in datasets.items():
        for split, part in splits.items():
            save_frame(part, RAW / name / f"{split}.parquet")
        summary[name] = {split: len(part) for split, part in splits.items()}
    save_json({"rows": len(frame), "datasets": summary}, REPORTS / "ingest.json")
    print(f"ingested {len(frame)} rows into {summary}")
    return summary


if __name__ == "__main__":
    run_stage(ingest)
