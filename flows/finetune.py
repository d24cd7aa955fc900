"""Stage finetune: adapt a model to `finetune.dataset` with few labels -> models/finetune.

Reads the target splits (data/augmented, data/repaired) and the starting weights named by
`finetune.init_from`: models/train, a packaged pretrained model, or a weights file. Writes
models/finetune/{model.safetensors,model.json}, data/finetune/labelled_ids.parquet (the ids of the
rows whose labels it used: compress reads them), reports/finetune/transfer.json (which tensors were
loaded, skipped, mismatched or left new) and the per-epoch history. With `finetune.baseline`, the
same architecture is also trained from scratch on the same labels and budget
(models/finetune/scratch), so evaluate reports the gain instead of assuming it. With
`finetune.replay_source`, rows of the train stage's data set train beside the target's (joint
fine-tuning). Checkpoints live under checkpoints/finetune/ and checkpoints/finetune-scratch/ (as
train's), so an interrupted run resumes, the unfreezing schedule included. The logic:
tasks/finetune.py `run`.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

import tasks.finetune
from flows._stage import AUGMENTED, DATA, MODELS, REPORTS, fails_cleanly, run_stage
from flows._training import CHECKPOINTS, epoch_progress, load_class_weights, load_splits, save_fit
from tasks.config import Params
from tasks.init_from import load_starting_point
from tasks.io import load_frame, save_frame, save_json, save_text
from tasks.train import preflight

LABELLED_IDS = DATA / "finetune" / "labelled_ids.parquet"


@flow(name="finetune")
@fails_cleanly
def finetune(params: Params) -> dict:
    cfg = params.finetune
    print(preflight(cfg.trainer, "finetune.trainer"))
    pool, val = load_splits(cfg.dataset)
    source_pool = load_frame(AUGMENTED / params.train.dataset / "train.parquet") if tasks.finetune.replays_source(cfg) else None
    data = tasks.finetune.FinetuneData(pool, val, load_starting_point(params, MODELS / "train"),
                                       load_class_weights(params, cfg.dataset), source_pool)
    result = tasks.finetune.run(params, data, on_epoch=epoch_progress("finetune-progress"),
                                checkpoint_dir=CHECKPOINTS / "finetune", scratch_checkpoint_dir=CHECKPOINTS / "finetune-scratch")

    save_json(result.transfer, REPORTS / "finetune" / "transfer.json")
    save_frame(result.labelled, LABELLED_IDS)
    save_fit(result.tuned, result.spec, MODELS / "finetune", REPORTS / "finetune", "finetune")
    if result.scratch is not None:
        save_fit(result.scratch, result.spec, MODELS / "finetune" / "scratch", REPORTS / "finetune", "scratch")
    else:
        save_no_baseline()
    publish_transfer(result.transfer)
    return result.summary


def save_no_baseline() -> None:
    """The baseline's declared DVC outputs, empty; a baseline from an earlier run would pass for this run's."""
    save_json({}, REPORTS / "finetune" / "scratch_metrics.json")
    save_text("epoch\n", REPORTS / "finetune" / "scratch_history.csv")
    (MODELS / "finetune" / "scratch").mkdir(parents=True, exist_ok=True)
    for stale in (MODELS / "finetune" / "scratch").glob("model.*"):
        stale.unlink()


def publish_transfer(transfer: dict) -> None:
    """What was transferred, as one line and a Prefect table."""
    counts = {k: len(transfer[k]) if isinstance(transfer[k], list) else transfer[k]
              for k in ("loaded", "mismatched", "skipped", "missing")}
    source = transfer["init_from"]
    print(f"transfer from {source}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + (f"; new or mismatched: {', '.join(transfer['missing'][:6])}" if isinstance(transfer["missing"], list) else ""))
    create_table_artifact([{"tensors": k, "count": v} for k, v in counts.items()], key="transfer",
                          description=f"Weights transferred from {source} (details: reports/finetune/transfer.json)")


if __name__ == "__main__":
    run_stage(finetune)
