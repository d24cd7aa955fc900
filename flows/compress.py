"""Stage compress: quantize, prune and distill the evaluated model; keep the best within budgets.

Reads models/<compress.model>, data/repaired/<dataset>/{val,test}.parquet,
data/augmented/<dataset>/train.parquet (the whole train pool: calibration, distillation) and
data/finetune/labelled_ids.parquet (the rows whose labels the fine-tune used). Writes
models/compressed/ (model.safetensors + model.json, model.onnx checked against PyTorch, MODEL_CARD.md),
reports/compress/{metrics.json, candidates.json, candidates.md} and Prefect artifacts
("compression" table, "model-card" markdown). With no candidate within every budget it fails
(`on_miss: fail`) or ships the uncompressed model with the verdicts (`on_miss: keep_original`).
The logic: tasks/compress.py `run`.
"""

from __future__ import annotations

import hashlib

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from safetensors.torch import save_file

import tasks.compress
from flows._stage import AUGMENTED, DATA, MODELS, REPAIRED, REPORTS, fails_cleanly, run_stage
from tasks.config import Params
from tasks.io import atomic_path, load_frame, save_bytes, save_json, save_text
from tasks.model_card import candidates_markdown
from tasks.model_io import load_model

OUT, REPORT = MODELS / "compressed", REPORTS / "compress"
LABELLED_IDS = DATA / "finetune" / "labelled_ids.parquet"  # the finetune stage's declared output


@flow(name="compress")
@fails_cleanly
def compress(params: Params) -> dict:
    cfg = params.compress
    teacher, spec = load_model(MODELS / cfg.model)
    dataset = spec.extra["trained_on"]
    inputs = {"model": MODELS / cfg.model / "model.safetensors", "test": REPAIRED / dataset / "test.parquet",
              "val": REPAIRED / dataset / "val.parquet", "pool": AUGMENTED / dataset / "train.parquet"}
    labelled = load_frame(LABELLED_IDS)[params.data.id] if tasks.compress.needs_labelled_ids(params) else None
    data = tasks.compress.CompressData(teacher, spec, *(load_frame(inputs[k]) for k in ("test", "val", "pool")), labelled,
                                       {str(path): hashlib.md5(path.read_bytes()).hexdigest() for path in inputs.values()})
    result = tasks.compress.run(params, data)

    pick = result.chosen
    tensors, encoding = pick.saved_state()
    with atomic_path(OUT / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    save_json({**pick.spec.to_json(), "compression": pick.recipe, "encoding": encoding, "data_version": data.data_version},
              OUT / "model.json")
    save_bytes(result.onnx, OUT / "model.onnx")
    save_text(result.card, OUT / "MODEL_CARD.md")
    table = [{k: v for k, v in r.items() if k != "missed"} for r in result.rows]
    save_json(result.metrics, REPORT / "metrics.json")
    save_json({"chosen": pick.name, "candidates": table, "onnx": result.onnx_report}, REPORT / "candidates.json")
    save_text(candidates_markdown(result.rows, cfg.latency.batch_sizes), REPORT / "candidates.md")

    create_table_artifact(table, key="compression", description=f"Compression candidates (chosen: {pick.name})")
    create_markdown_artifact(result.card, key="model-card", description="Model card of the compressed model")
    m = result.metrics
    print(f"compress: chose {pick.name}: accuracy {m['accuracy_before']:.4f} -> {m['accuracy_after']:.4f}, "
          f"{m['bytes_before']} -> {m['bytes_after']} bytes ({m['size_reduction']:.2f}x); ONNX {result.onnx_report['shipped']}")
    return result.metrics


if __name__ == "__main__":
    run_stage(compress)
