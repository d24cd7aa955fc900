"""Stage compress: quantize, prune and distill the evaluated model; keep the best within budgets.

Reads models/<compress.model>, data/repaired/<dataset>/{val,test}.parquet and
data/augmented/<dataset>/train.parquet (the whole train pool: calibration, distillation). Writes
models/compressed/ (model.safetensors + model.json, model.onnx checked against PyTorch, MODEL_CARD.md),
reports/compress/{metrics.json, candidates.json, candidates.md} and Prefect artifacts
("compression" table, "model-card" markdown). With no candidate within every budget it fails
(`on_miss: fail`) or ships the uncompressed model with the verdicts (`on_miss: keep_original`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from safetensors.torch import save_file

from flows._stage import AUGMENTED, MODELS, REPAIRED, REPORTS, fails_cleanly, run_stage
from lightning_modules.distill import UNLABELLED
from tasks.compress import (distill_candidate, judge, measure, original, prune_candidate, quantize_dynamic_int8,
                            quantize_static_int8)
from tasks.config import Params
from tasks.errors import UserError
from tasks.export import export_onnx
from tasks.finetune import augment_labels, few_labels
from tasks.io import atomic_path, load_frame, save_bytes, save_json, save_text
from tasks.model_io import load_model
from tasks.model_card import candidates_markdown, model_card
from tasks.train import to_arrays

OUT, REPORT = MODELS / "compressed", REPORTS / "compress"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def labelled_ids(params: Params, pool, mode: str) -> set:
    """The train-pool ids whose labels compression may use (see DistillConfig.labels)."""
    if mode == "none":
        return set()
    if mode == "all":
        return set(pool[params.data.id])
    chosen = few_labels.fn(pool, params.data, params.finetune.labels_per_class, params.finetune.seed)
    return set(chosen[params.data.id])


@flow(name="compress")
@fails_cleanly
def compress(params: Params) -> dict:
    cfg, data = params.compress, params.data
    teacher, spec = load_model(MODELS / cfg.model)
    dataset = spec.extra["trained_on"]
    inputs = {"model": MODELS / cfg.model / "model.safetensors", "test": REPAIRED / dataset / "test.parquet",
              "val": REPAIRED / dataset / "val.parquet", "pool": AUGMENTED / dataset / "train.parquet"}
    test, val, pool = (load_frame(inputs[k]) for k in ("test", "val", "pool"))
    x, y = to_arrays(test, data, spec.classes)
    val_arrays = to_arrays(val, data, spec.classes)
    pool_x, pool_y = to_arrays(pool, data, spec.classes)

    candidates, failed = [original(teacher, spec)], {}
    if cfg.quantize.dynamic:
        candidates.append(quantize_dynamic_int8(teacher, spec, cfg.quantize.conv_weights))
    if cfg.quantize.static:
        try:
            candidates.append(quantize_static_int8(teacher, spec, pool_x[:cfg.quantize.calibration_rows], cfg.quantize.engine))
        except (NotImplementedError, RuntimeError) as e:  # an op or engine this torch cannot quantize
            failed["static_int8"] = f"static quantization failed: {str(e).splitlines()[0]}"
    if cfg.prune:
        # The pruning fine-tune sees every pool image (the unpruned model's outputs) and the labels the
        # fine-tuned model saw (finetune's few labels).
        few = pool[params.data.id].isin(labelled_ids(params, pool, "few")).to_numpy()
        arrays = {"train": (pool_x, np.where(few, pool_y, UNLABELLED)), "val": val_arrays}
        for entry in cfg.prune:
            candidates.append(prune_candidate(teacher, spec, entry, arrays, cfg.prune_optimizer, cfg.prune_trainer, cfg.seed))
    if cfg.distill:
        # Every pool image carries the teacher's soft targets; hard labels only where cfg.distill.labels allows.
        # Augmented copies widen the transfer set: the teacher labels each copy as it sees it.
        keep = pool[params.data.id].isin(labelled_ids(params, pool, cfg.distill.labels)).to_numpy()
        train = augment_labels(pool_x, np.where(keep, pool_y, UNLABELLED), cfg.distill.augment_copies, params.augment, cfg.seed)
        arrays = {"train": train, "val": val_arrays}
        candidates.append(distill_candidate(teacher, spec, cfg.distill, arrays, cfg.seed))

    rows = [measure(c, x, y, cfg.latency) for c in candidates]
    rows, chosen = judge(rows, cfg.budgets, cfg.select, cfg.latency.budget_batch)
    rows += [{"name": name, "verdict": why, "missed": [why]} for name, why in failed.items()]
    if chosen is None:
        missed = "; ".join(f"{r['name']}: {', '.join(r['missed'])}" for r in rows[1:]) or "no candidate enabled"
        if cfg.on_miss == "fail":
            raise UserError(f"compress: no candidate met every budget in params.yaml compress.budgets ({missed})")
        print(f"no candidate met every budget; shipping the uncompressed model ({missed})")
        chosen = "original"
    pick = next(c for c in candidates if c.name == chosen)

    # ONNX first: a parity failure stops the stage before any model file is written.
    onnx, onnx_report = export_onnx(pick.fp32, pick.model if pick.quantized else None, pick.spec.in_shape, x, y,
                                    cfg.onnx, cfg.latency.num_threads)
    tensors, encoding = pick.saved_state()
    data_version = {str(path): md5(path) for path in inputs.values()}
    before, after = rows[0], next(r for r in rows if r["name"] == chosen)
    with atomic_path(OUT / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    save_json({**pick.spec.to_json(), "compression": pick.recipe, "encoding": encoding, "data_version": data_version},
              OUT / "model.json")
    save_bytes(onnx, OUT / "model.onnx")
    card = model_card(pick.name, rows, cfg, data_version, onnx_report, pick.recipe)
    save_text(card, OUT / "MODEL_CARD.md")

    table = [{k: v for k, v in r.items() if k != "missed"} for r in rows]
    metrics = {"chosen": chosen, "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
               "bytes_before": before["bytes"], "bytes_after": after["bytes"], "size_reduction": after["size_reduction"],
               "onnx_max_abs_diff": onnx_report["fp32"]["max_abs_diff"], "onnx_bytes": len(onnx),
               "candidates": {r["name"]: {k: r[k] for k in ("accuracy", "accuracy_drop_points", "size_reduction", "bytes",
                                                              "nonzero_parameters", f"p50_ms_b{cfg.latency.budget_batch}")}
                              for r in rows if "accuracy" in r}}
    save_json(metrics, REPORT / "metrics.json")
    save_json({"chosen": chosen, "candidates": table, "onnx": onnx_report}, REPORT / "candidates.json")
    save_text(candidates_markdown(rows, cfg.latency.batch_sizes), REPORT / "candidates.md")
    create_table_artifact(table, key="compression", description=f"Compression candidates (chosen: {chosen})")
    create_markdown_artifact(card, key="model-card", description="Model card of the compressed model")
    print(f"compress: chose {chosen}: accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}, "
          f"{before['bytes']} -> {after['bytes']} bytes ({after['size_reduction']:.2f}x); ONNX {onnx_report['shipped']}")
    return metrics


if __name__ == "__main__":
    run_stage(compress)
