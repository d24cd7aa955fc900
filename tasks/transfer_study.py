"""Which params a few-label transfer study holds for, and its record (stdlib only: the run summary reads it).

benchmarks/transfer_gain.py fine-tunes and trains from scratch over seeds and label budgets and
writes benchmarks/results/transfer_gain.json with `record`; flows/summary.py quotes the gain over
seeds from it only while `params_digest` of the current params.yaml still matches.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

RESULTS = Path("benchmarks") / "results" / "transfer_gain.json"
# Everything a study's figures depend on, less what it varies itself (seed, budget) and trainer
# settings that change no result (progress bars, loggers, threads).
SECTIONS = ("data", "ingest", "validate", "repair", "augment", "train", "finetune")
VARIED = {"seed", "labels_per_class", "baseline"}
NO_EFFECT = {"progress_bar", "logger", "num_threads"}


def params_digest(params: dict) -> str:
    """`params`: every setting, defaults included (Params.model_dump(mode="json", by_alias=True))."""
    picked = {k: params.get(k) for k in SECTIONS}
    for stage in ("train", "finetune"):
        block = dict(picked[stage] or {})
        if isinstance(block.get("trainer"), dict):
            block["trainer"] = {k: v for k, v in block["trainer"].items() if k not in NO_EFFECT}
        picked[stage] = {k: v for k, v in block.items() if not (stage == "finetune" and k in VARIED)}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record(rows: list[dict], params: dict, test_rows: int) -> dict:
    """The study's figures a budget: per seed fine-tuned, scratch and their difference, and the means."""
    budgets = {}
    for budget in sorted({r["labels_per_class"] for r in rows}):
        mine = [r for r in rows if r["labels_per_class"] == budget and r.get("scratch") is not None]
        gains = [round(r["finetuned"] - r["scratch"], 6) for r in mine]
        budgets[str(budget)] = {"seeds": [r["seed"] for r in mine], "finetuned": [r["finetuned"] for r in mine],
                                "scratch": [r["scratch"] for r in mine], "gains": gains,
                                "finetuned_mean": round(statistics.mean(r["finetuned"] for r in mine), 4),
                                "scratch_mean": round(statistics.mean(r["scratch"] for r in mine), 4),
                                "gain_mean": round(statistics.mean(gains), 4)}
    return {"params_digest": params_digest(params), "test_rows": test_rows, "budgets": budgets}


def over_seeds(study: dict | None, params: dict) -> dict | None:
    """The study's row for params' budget, if the study was measured with these params; else None."""
    if not study or study.get("params_digest") != params_digest(params):
        return None
    return study.get("budgets", {}).get(str((params.get("finetune") or {}).get("labels_per_class")))
