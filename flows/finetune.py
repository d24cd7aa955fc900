"""Stage finetune: adapt models/train to `finetune.dataset` with few labels -> models/finetune.

With `finetune.baseline`, the same architecture is also trained from scratch on the same labels
and budget (models/finetune/scratch), so evaluate can report the gain instead of assuming it.
"""

from __future__ import annotations

from prefect import flow

from flows._stage import MODELS, REPORTS, fails_cleanly, run_stage
from flows._training import arrays_for, class_weights, epoch_progress, load_dataset, write_model
from tasks.config import Params
from tasks.finetune import backbone_lr_ratio, few_labels
from tasks.io import load_json, save_json, save_text
from tasks.model_io import ModelSpec, load_weights
from tasks.train import backbone_spec, fit_classifier, input_shape, preflight, transfer_state


@flow(name="finetune")
@fails_cleanly
def finetune(params: Params) -> dict:
    cfg = params.finetune
    print(preflight(cfg.trainer, "finetune.trainer"))
    pool, val_frame, classes = load_dataset(params, cfg.dataset)
    train_frame = few_labels(pool, params.data, cfg.labels_per_class, cfg.seed)
    arrays = arrays_for(params, classes, train=train_frame, val=val_frame)
    weights = class_weights(params, cfg.dataset, classes)

    if cfg.init_from == "train":
        source = load_json(MODELS / "train" / "model.json")
        spec = ModelSpec(source["backbone"], input_shape(pool, params.data), classes,
                         {"trained_on": cfg.dataset, "init_from": "models/train", "data": params.data.model_dump(mode="json")})
        new_head = ("head.",) if source["classes"] != classes else ()  # other classes: the old head means nothing
        init_state, transfer = transfer_state(load_weights(MODELS / "train" / "model.safetensors"), spec.build(), new_head)
        print(f"transfer: loaded {len(transfer['loaded'])} tensors, new or mismatched {transfer['missing']}")
    else:
        spec = ModelSpec(backbone_spec(params.train.backbone), input_shape(pool, params.data), classes,
                         {"trained_on": cfg.dataset, "init_from": "scratch", "data": params.data.model_dump(mode="json")})
        init_state, transfer = None, {"loaded": [], "missing": "all"}
    save_json(transfer, REPORTS / "finetune" / "transfer.json")

    ratio = backbone_lr_ratio(cfg) if init_state is not None else 1.0
    tuned = fit_classifier(arrays, spec, cfg.optimizer, cfg.trainer, cfg.seed, weights, init_state, ratio,
                           on_epoch=epoch_progress("finetune-progress"))
    write_model(tuned, spec, "finetune", "finetune", "finetune")
    summary = {"labelled_rows": len(train_frame), "finetune": tuned.val_metrics}
    if cfg.baseline and init_state is not None:
        scratch = fit_classifier.with_options(name="fit_from_scratch")(arrays, spec, cfg.optimizer, cfg.trainer, cfg.seed, weights)
        write_model(scratch, spec, "finetune", "finetune/scratch", "scratch")
        summary["scratch"] = scratch.val_metrics
    else:
        # Declared DVC outputs: always written, empty when there is no baseline.
        save_json({}, REPORTS / "finetune" / "scratch_metrics.json")
        save_text("epoch\n", REPORTS / "finetune" / "scratch_history.csv")
    return summary


if __name__ == "__main__":
    run_stage(finetune)
