"""Stage train: learn a classifier on `train.dataset` -> models/train/{model.safetensors,model.json}."""

from __future__ import annotations

from prefect import flow

from flows._stage import fails_cleanly, run_stage
from flows._training import arrays_for, class_weights, epoch_progress, load_dataset, write_model
from tasks.config import Params
from tasks.model_io import ModelSpec
from tasks.train import backbone_spec, fit_classifier, input_shape, preflight


@flow(name="train")
@fails_cleanly
def train(params: Params) -> dict:
    cfg = params.train
    print(preflight(cfg.trainer, "train.trainer"))
    train_frame, val_frame, classes = load_dataset(params, cfg.dataset)
    spec = ModelSpec(backbone_spec(cfg.backbone), input_shape(train_frame, params.data), classes,
                     {"trained_on": cfg.dataset, "data": params.data.model_dump(mode="json")})
    result = fit_classifier(arrays_for(params, classes, train=train_frame, val=val_frame), spec, cfg.optimizer,
                            cfg.trainer, cfg.seed, class_weights(params, cfg.dataset, classes),
                            label_smoothing=cfg.label_smoothing, on_epoch=epoch_progress("train-progress"))
    write_model(result, spec, "train", "train", "train")
    return result.val_metrics


if __name__ == "__main__":
    run_stage(train)
