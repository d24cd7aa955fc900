"""Stage train: learn a model on `train.dataset` -> models/train/{model.safetensors,model.json}.

Also writes reports/train/ (history, final metrics, dvclive metrics and plots under live/) and
keeps checkpoints under checkpoints/train/<key>/ (git-ignored, outside DVC's outputs), so a rerun
of an interrupted stage resumes where it stopped.
"""

from __future__ import annotations

from prefect import flow

from flows._stage import REPORTS, fails_cleanly, run_stage
from flows._training import CHECKPOINTS, arrays_for, class_weights, epoch_progress, load_dataset, require_a_commit, write_model
from tasks.config import Params
from tasks.errors import UserError
from tasks.model_io import ModelSpec
from tasks.train import LOSS_TASK, backbone_spec, fit_classifier, input_shape, preflight, vocab_size


@flow(name="train")
@fails_cleanly
def train(params: Params) -> dict:
    cfg, data = params.train, params.data
    print(preflight(cfg.trainer, "train.trainer"))
    if cfg.trainer.logger == "dvclive":
        require_a_commit("train.trainer.logger")
    train_frame, val_frame, classes = load_dataset(params, cfg.dataset)
    task = LOSS_TASK[cfg.loss]
    if task == "binary" and len(classes) != 2:
        raise UserError(f"train.loss: bce needs two classes, found {len(classes)} in column '{data.label}'; use cross_entropy")
    if cfg.on_the_fly is not None and data.modality != "image":
        raise UserError(f"train.on_the_fly: batch augmentation is for images, data.modality is {data.modality}")
    classes = [] if task == "regression" else classes
    spec = ModelSpec(backbone_spec(cfg.backbone, data, vocab_size(train_frame, data)), input_shape(train_frame, data), classes,
                     {"trained_on": cfg.dataset, "task": task, "data": data.model_dump(mode="json")})
    weights = class_weights(params, cfg.dataset, classes) if task != "regression" else None
    result = fit_classifier(arrays_for(params, classes, task=task, train=train_frame, val=val_frame), spec, cfg.optimizer,
                            cfg.trainer, cfg.seed, weights, label_smoothing=cfg.label_smoothing,
                            on_epoch=epoch_progress("train-progress"), on_the_fly=cfg.on_the_fly,
                            checkpoint_dir=CHECKPOINTS / "train", live_dir=REPORTS / "train" / "live")
    write_model(result, spec, "train", "train", "train")
    return result.val_metrics


if __name__ == "__main__":
    run_stage(train)
