"""Stage train: learn a model on `train.dataset` -> models/train/{model.safetensors,model.json}.

Also writes reports/train/ (history, final metrics, dvclive metrics and plots under live/) and
keeps checkpoints under checkpoints/train/<key>/ (git-ignored, outside DVC's outputs), so a rerun
of an interrupted stage resumes where it stopped. The logic: tasks/train.py `run`.
"""

from __future__ import annotations

from prefect import flow

import tasks.train
from flows._stage import MODELS, REPORTS, fails_cleanly, run_stage
from flows._training import CHECKPOINTS, epoch_progress, load_class_weights, load_splits, require_a_commit, save_fit
from tasks.config import Params


@flow(name="train")
@fails_cleanly
def train(params: Params) -> dict:
    cfg = params.train
    print(tasks.train.preflight(cfg.trainer, "train.trainer"))
    if cfg.trainer.logger == "dvclive":
        require_a_commit("train.trainer.logger")
    data = tasks.train.TrainData(*load_splits(cfg.dataset), load_class_weights(params, cfg.dataset))
    result = tasks.train.run(params, data, on_epoch=epoch_progress("train-progress"),
                             checkpoint_dir=CHECKPOINTS / "train", live_dir=REPORTS / "train" / "live")
    save_fit(result.fit, result.spec, MODELS / "train", REPORTS / "train", "train")
    return result.fit.val_metrics


if __name__ == "__main__":
    run_stage(train)
