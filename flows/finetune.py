"""Stage finetune: adapt a model to `finetune.dataset` with few labels -> models/finetune.

Reads the target splits (data/augmented, data/repaired) and the starting weights named by
`finetune.init_from`: models/train, a packaged pretrained model, or a weights file. Writes
models/finetune/{model.safetensors,model.json}, reports/finetune/transfer.json (which tensors were
loaded, skipped, mismatched or left new) and the per-epoch history. With `finetune.baseline`, the
same architecture is also trained from scratch on the same labels and budget
(models/finetune/scratch), so evaluate reports the gain instead of assuming it. With
`finetune.replay_source`, rows of the train stage's data set train beside the target's (joint
fine-tuning, one head over both sets of classes, cut to the target's at the end). Checkpoints live
under checkpoints/finetune/ and checkpoints/finetune-scratch/ (as train's), so an interrupted
run resumes, the unfreezing schedule included.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from prefect import flow
from prefect.artifacts import create_table_artifact

from flows._stage import MODELS, REPORTS, fails_cleanly, run_stage
from flows._training import CHECKPOINTS, arrays_for, class_weights, epoch_progress, load_dataset, write_model
from tasks.config import Params
from tasks.finetune import (augment_labels, balanced_weights, check_transfer, few_labels, keep_classes, map_keys,
                            package_backbone, package_weights, read_weights_file, replay_rows, schedule, seed_joint_head,
                            source_kind, with_replay)
from tasks.io import load_json, save_json, save_text
from tasks.model_io import ModelSpec, load_weights
from tasks.train import backbone_spec, fit_classifier, input_shape, preflight, to_arrays, transfer_state


def starting_point(params: Params, classes: list) -> tuple[dict, dict | None, tuple[str, ...]]:
    """(backbone spec, source weights or None, key prefixes never to transfer) for init_from."""
    cfg = params.finetune
    kind = source_kind(cfg)
    if kind == "train":
        source = load_json(MODELS / "train" / "model.json")
        new_head = ("head.",) if source["classes"] != classes else ()  # other classes: the old head means nothing
        return source["backbone"], load_weights(MODELS / "train" / "model.safetensors"), new_head
    if kind == "package":
        return package_backbone(cfg), package_weights(cfg), ("head.",)
    if kind == "file":  # the user's own weights for the train.backbone network, key names mapped
        return backbone_spec(params.train.backbone), map_keys(read_weights_file(cfg.init_from), cfg.key_map), ()
    return backbone_spec(params.train.backbone), None, ()


def replay_source(params: Params, arrays: dict, classes: list) -> tuple[dict, list, list[int], list[int], dict]:
    """finetune.replay_source: (joint arrays, joint classes, rows of the target classes and of the
    source classes in the joint head, a report). The source rows come from the train stage's data set."""
    source_classes = load_json(MODELS / "train" / "model.json")["classes"]  # the order of the source head's rows
    source_frame, _, _ = load_dataset(params, params.train.dataset)
    replayed = replay_rows(*to_arrays(source_frame, params.data, source_classes), params.finetune.replay_source, params.finetune.seed)
    train, joint, target_rows, source_rows = with_replay(arrays["train"], replayed, classes, source_classes)
    val = (arrays["val"][0], np.array(target_rows)[arrays["val"][1]])
    report = {"dataset": params.train.dataset, "rows": len(replayed[1]), "joint_classes": joint}
    return {"train": train, "val": val}, joint, target_rows, source_rows, report


@flow(name="finetune")
@fails_cleanly
def finetune(params: Params) -> dict:
    from lightning_modules.transfer import TransferSchedule, group_prefixes, layer_groups

    cfg = params.finetune
    print(preflight(cfg.trainer, "finetune.trainer"))
    pool, val_frame, classes = load_dataset(params, cfg.dataset)
    train_frame = few_labels(pool, params.data, cfg.labels_per_class, cfg.seed)
    arrays = arrays_for(params, classes, train=train_frame, val=val_frame)
    arrays["train"] = augment_labels(*arrays["train"], cfg.augment_copies, params.augment, cfg.seed)
    weights = class_weights(params, cfg.dataset, classes)

    backbone, source, new_head = starting_point(params, classes)
    spec = ModelSpec(backbone, input_shape(pool, params.data), classes,
                     {"trained_on": cfg.dataset, "init_from": cfg.init_from, "strategy": cfg.strategy,
                      "data": params.data.model_dump(mode="json")})
    fit_spec, fit_arrays, fit_weights, target_rows = spec, arrays, weights, None  # what the fine-tune trains on
    if source is not None:
        import torch

        replaying = cfg.replay_source > 0 and source_kind(cfg) == "train"
        if cfg.replay_source and not replaying:
            print(f"finetune.replay_source: not used with init_from: {cfg.init_from} (it replays the train stage's data set beside its head)")
        if replaying:  # joint fine-tuning: the network trains with one head over source and target classes
            fit_arrays, joint, target_rows, source_rows, replay = replay_source(params, arrays, classes)
            fit_spec, fit_weights = ModelSpec(backbone, spec.in_shape, joint, spec.extra), balanced_weights(fit_arrays["train"][1], len(joint))
        torch.manual_seed(cfg.seed)  # the new head's initial weights: seeded, or they follow the process's RNG state
        network = fit_spec.build()
        groups = layer_groups(network.backbone)
        unfreeze_at, lrs = schedule(cfg, len(groups), cfg.optimizer.lr)
        fresh = group_prefixes(network.backbone, groups[len(groups) - cfg.reinit_top:])  # reinit_top: not transferred
        init_state, transfer = transfer_state(source, network, new_head + fresh)
        check_transfer(transfer, cfg.init_from)
        if replaying:
            init_state = seed_joint_head(init_state, source, source_rows)
            transfer["replay"] = replay
        callbacks = [TransferSchedule(unfreeze_at, lrs, cfg.batchnorm)]
        transfer["schedule"] = [{"group": i, "unfreeze_at_epoch": at, "lr": lr} for i, (at, lr) in enumerate(zip(unfreeze_at, lrs))]
    else:
        init_state, callbacks, transfer = None, None, {"loaded": [], "mismatched": [], "skipped": [], "missing": "all"}
    resume_key = {"schedule": transfer.get("schedule"), "batchnorm": cfg.batchnorm}
    save_json({"init_from": cfg.init_from, "strategy": cfg.strategy, **transfer}, REPORTS / "finetune" / "transfer.json")
    counts = {k: len(transfer[k]) if isinstance(transfer[k], list) else transfer[k] for k in ("loaded", "mismatched", "skipped", "missing")}
    print(f"transfer from {cfg.init_from}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + (f"; new or mismatched: {', '.join(transfer['missing'][:6])}" if source is not None else ""))
    create_table_artifact([{"tensors": k, "count": v} for k, v in counts.items()], key="transfer",
                          description=f"Weights transferred from {cfg.init_from} (details: reports/finetune/transfer.json)")

    # With a source, the optimizer starts with the head only and the schedule adds backbone groups.
    tuned = fit_classifier(fit_arrays, fit_spec, cfg.optimizer, cfg.trainer, cfg.seed, fit_weights, init_state,
                           0.0 if source is not None else 1.0, on_epoch=epoch_progress("finetune-progress"), callbacks=callbacks,
                           checkpoint_dir=CHECKPOINTS / "finetune", run_settings=resume_key)
    if target_rows is not None:  # the joint head cut down to the target classes: an ordinary target model
        tuned = dataclasses.replace(tuned, state=keep_classes(tuned.state, target_rows))
    write_model(tuned, spec, "finetune", "finetune", "finetune")
    summary = {"labelled_rows": len(train_frame), "training_rows": len(fit_arrays["train"][1]), "finetune": tuned.val_metrics}
    if cfg.baseline and source is not None:
        scratch = fit_classifier.with_options(name="fit_from_scratch")(arrays, spec, cfg.optimizer, cfg.trainer, cfg.seed, weights,
                                                                     checkpoint_dir=CHECKPOINTS / "finetune-scratch")
        write_model(scratch, spec, "finetune", "finetune/scratch", "scratch")
        summary["scratch"] = scratch.val_metrics
    else:
        # Declared DVC outputs: always written, empty when there is no baseline.
        save_json({}, REPORTS / "finetune" / "scratch_metrics.json")
        save_text("epoch\n", REPORTS / "finetune" / "scratch_history.csv")
        (MODELS / "finetune" / "scratch").mkdir(parents=True, exist_ok=True)
        for stale in (MODELS / "finetune" / "scratch").glob("model.*"):
            stale.unlink()  # a baseline from an earlier run would be reported as this run's
    return summary


if __name__ == "__main__":
    run_stage(finetune)
