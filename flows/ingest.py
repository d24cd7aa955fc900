"""Stage ingest: source -> data/raw/<dataset>/{train,val,test}.parquet (split once, seeded)."""

from __future__ import annotations

from prefect import flow, task

from flows._stage import RAW, REPORTS, fails_cleanly, run_stage
from tasks.config import Params
from tasks.errors import UserError
from tasks.ingest import carve_and_split, read_source
from tasks.io import save_frame, save_json


def _transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, not mistakes: a UserError (a missing or malformed file) fails the same way again."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=_transient)  # reading a source is I/O
def load_source(params: Params):
    return read_source(params.ingest.source, params.data)


@flow(name="ingest")
@fails_cleanly
def ingest(params: Params) -> dict:
    try:
        frame = load_source(params)
    except OSError as e:  # still failing after the retries: name the source, no traceback
        raise UserError(f"{params.ingest.source.path or params.ingest.source.kind}: could not be read ({e})") from None
    datasets, notes = carve_and_split(frame, params.ingest, params.data)
    summary = {}
    for name, splits in datasets.items():
        for split, part in splits.items():
            save_frame(part, RAW / name / f"{split}.parquet")
        summary[name] = {split: len(part) for split, part in splits.items()}
    notes = {key: note for key, note in notes.items() if note}
    save_json({"rows": len(frame), "datasets": summary, **notes}, REPORTS / "ingest.json")
    print(f"ingested {len(frame)} rows into {summary}")
    for key, note in notes.items():
        print(f"  {key}: {note}")
    return summary


if __name__ == "__main__":
    run_stage(ingest)
