"""Does transfer help, and by how much? The few-label study behind the default demo's params.

Trains the source model once (params `train`), then for each labels-per-class budget and seed
fine-tunes it on the target data set (params `finetune`, with --set overrides) and trains the same
architecture from scratch on the same labels, augmentation and epochs; both are scored on the
target's held-out test split. Reads the data stages' outputs (data/augmented, data/repaired: run
`dvc repro augment` first). Prints a table, then one JSON line with per-budget mean accuracies.

    python benchmarks/transfer_gain.py --labels 5 10 50 --seeds 0 1 2
    python benchmarks/transfer_gain.py --labels 10 --seeds 0 --set strategy=linear_probe --set augment_copies=0
    python benchmarks/transfer_gain.py --labels 5 --seeds 42 0 1 2 3 --record   # what `make run`'s summary quotes
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.transfer import TransferSchedule, group_prefixes, layer_groups  # noqa: E402
from tasks.config import Params, load_params, parse_params  # noqa: E402
from tasks.evaluate import predict  # noqa: E402
from tasks.finetune import (  # noqa: E402
    augment_labels,
    balanced_weights,
    few_labels,
    keep_classes,
    replay_rows,
    schedule,
    seed_joint_head,
    with_replay,
)
from tasks.io import load_frame, load_json  # noqa: E402
from tasks.model_io import ModelSpec, load_weights, save_model  # noqa: E402
from tasks.train import FitResult, backbone_spec, fit_classifier, input_shape, to_arrays, transfer_state  # noqa: E402
from tasks.transfer_study import RESULTS, record  # noqa: E402


def arrays(frame, params: Params, classes):
    return to_arrays(frame, params.data, classes)


def accuracy(state, spec: ModelSpec, x, y) -> float:
    network = spec.build()
    network.load_state_dict(state)
    return float((predict.fn(network, x, 512).argmax(axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data", help="folder with augmented/ and repaired/ (dvc repro augment)")
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a finetune.* param (YAML value)")
    parser.add_argument("--source-cache", default=None,
                        help="a model.safetensors path: reuse the source model if there, else save it")
    parser.add_argument("--source-epochs", type=int, default=None, help="override train.trainer.max_epochs")
    parser.add_argument("--no-scratch", action="store_true", help="fine-tune only (comparing fine-tuning settings)")
    parser.add_argument("--curve", action="store_true", help="also score the test split after every epoch (diagnosis only)")
    parser.add_argument("--record", action="store_true",
                        help=f"write the per-seed figures to {RESULTS} (the run summary quotes them while params match)")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    raw = yaml.safe_load(Path(args.params).read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        node = raw["finetune"]
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    # What the figures hold for (what `--record` keys them by): params.yaml with --set, every default included.
    recipe = parse_params(copy.deepcopy(raw)).model_dump(mode="json", by_alias=True)
    for stage in ("train", "finetune"):  # a study prints its own table: no progress bars or dvclive
        raw[stage]["trainer"].update(progress_bar=False, logger="none")
    if args.source_epochs:
        raw["train"]["trainer"]["max_epochs"] = args.source_epochs
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="transfer_gain-") as merged:  # one per study
        merged.write(yaml.safe_dump(raw))
        merged.flush()
        params = load_params(merged.name)
    cfg, data = params.finetune, Path(args.data)

    # The source model, once.
    start = time.monotonic()
    src_train = load_frame(data / "augmented" / params.train.dataset / "train.parquet")
    src_val = load_frame(data / "repaired" / params.train.dataset / "val.parquet")
    src_classes = sorted(src_train[params.data.label].unique().tolist())
    src_spec = ModelSpec(backbone_spec(params.train.backbone), input_shape(src_train, params.data), src_classes, {})
    weights = None
    if params.repair.imbalance == "class_weight":
        weights = load_json(data / "repaired" / params.train.dataset / "repairer.json").get("class_weights")
    cache = Path(args.source_cache) if args.source_cache else None
    if cache and cache.exists():  # a study of many fine-tuning settings trains the source once
        source = FitResult(load_weights(cache), [], {"cached": str(cache)})
    else:
        source = fit_classifier.fn({"train": arrays(src_train, params, src_classes), "val": arrays(src_val, params, src_classes)},
                               src_spec, params.train.optimizer, params.train.trainer, params.train.seed,
                               [weights.get(str(c), 1.0) for c in src_classes] if weights else None,
                               label_smoothing=params.train.label_smoothing)
        if cache:
            save_model(source.state, src_spec, cache.parent)
    print(f"source model: {time.monotonic() - start:.0f} s, val {source.val_metrics}", flush=True)

    pool = load_frame(data / "augmented" / cfg.dataset / "train.parquet")
    test = load_frame(data / "repaired" / cfg.dataset / "test.parquet")
    classes = sorted(pool[params.data.label].unique().tolist())
    spec = ModelSpec(src_spec.backbone, src_spec.in_shape, classes, {})
    x_test, y_test = arrays(test, params, classes)
    backbone = spec.build().backbone
    groups = layer_groups(backbone)
    unfreeze_at, lrs = schedule(cfg, len(groups), cfg.optimizer.lr)
    fresh = group_prefixes(backbone, groups[len(groups) - cfg.reinit_top:])  # finetune.reinit_top: not transferred

    rows = []
    for per_class in args.labels:
        for seed in args.seeds:
            t0 = time.monotonic()
            few = few_labels.fn(pool, params.data, per_class, seed)
            train = augment_labels(*arrays(few, params, classes), cfg.augment_copies, params.augment, seed)
            split = {"train": train}  # scored on the test split at the end: no per-epoch validation to pay for
            if args.curve:  # watched, never used to pick a model
                split["val"] = (x_test, y_test)
            # What the fine-tune trains on: the target's labels, or with replay_source the joint set (as the stage does)
            fit_spec, fit_split, fit_weights, head_rows = spec, split, None, None
            if cfg.replay_source:
                replayed = replay_rows(*arrays(src_train, params, src_classes), cfg.replay_source, seed)
                joint_train, joint, head_rows, source_rows = with_replay(train, replayed, classes, src_classes)
                fit_spec = ModelSpec(spec.backbone, spec.in_shape, joint, {})
                fit_weights = balanced_weights(joint_train[1], len(joint))
                fit_split = {"train": joint_train, **({"val": (x_test, np.array(head_rows)[y_test])} if args.curve else {})}
            torch.manual_seed(seed)  # the new head's initial weights, as the finetune stage seeds them
            init_state, _ = transfer_state(source.state, fit_spec.build(), ("head.", *fresh))
            if cfg.replay_source:
                init_state = seed_joint_head(init_state, source.state, source_rows)
            tuned = fit_classifier.fn(fit_split, fit_spec, cfg.optimizer, cfg.trainer, seed, fit_weights, init_state, 0.0,
                                      callbacks=[TransferSchedule(unfreeze_at, lrs, cfg.batchnorm)])
            if head_rows is not None:  # the joint head cut to the target classes
                tuned = dataclasses.replace(tuned, state=keep_classes(tuned.state, head_rows))
            scratch = None if args.no_scratch else fit_classifier.fn(split, spec, cfg.optimizer, cfg.trainer, seed)
            row = {"labels_per_class": per_class, "seed": seed, "finetuned": accuracy(tuned.state, spec, x_test, y_test),
                   "scratch": scratch and accuracy(scratch.state, spec, x_test, y_test),
                   "seconds": round(time.monotonic() - t0, 1)}
            if args.curve:
                row["curves"] = {name: [r.get("val/acc") for r in fit.history]
                                 for name, fit in (("finetuned", tuned), ("scratch", scratch)) if fit}
            rows.append(row)
            print(json.dumps(row), flush=True)

    summary = {"strategy": cfg.strategy, "overrides": args.set, "test_rows": int(len(y_test)), "seeds": args.seeds, "budgets": {}}
    print("\n| labels a class | fine-tuned | from scratch | gain |\n|---:|---:|---:|---:|")
    for per_class in args.labels:
        mine = [r for r in rows if r["labels_per_class"] == per_class]
        tuned = statistics.mean(r["finetuned"] for r in mine)
        scratch = statistics.mean(r["scratch"] or 0.0 for r in mine)  # 0 with --no-scratch
        summary["budgets"][str(per_class)] = {"finetuned": round(tuned, 4), "scratch": round(scratch, 4),
                                              "gain": round(tuned - scratch, 4),
                                              "finetuned_min": round(min(r["finetuned"] for r in mine), 4)}
        print(f"| {per_class} | {tuned:.3f} | {scratch:.3f} | {tuned - scratch:+.3f} |")
    if args.record:
        if args.set or args.source_epochs or args.no_scratch:
            sys.exit("--record is for the params as they are: drop --set, --source-epochs and --no-scratch")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(record(rows, recipe, int(len(y_test))), indent=2) + "\n")
        print(f"recorded: {RESULTS}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
