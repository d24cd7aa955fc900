"""The compressed model's card and candidate table as Markdown (pure: rows and config in, text out).

flows/compress.py writes the card to models/compressed/MODEL_CARD.md, the table to
reports/compress/candidates.md, and publishes both to the Prefect UI.
"""

from __future__ import annotations

import json

from tasks.config import CompressConfig


def candidates_markdown(rows: list[dict], batch_sizes: list[int]) -> str:
    latency = [f"p50/p95 ms @{b}" for b in batch_sizes]
    head = ["candidate", "accuracy", "drop (points)", "bytes", "size reduction", "parameters", "non-zero", *latency, "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for r in rows:
        if "accuracy" not in r:  # a method that could not be applied
            lines.append(f"| {r['name']} |" + " |" * (len(head) - 2) + f" {r['verdict']} |")
            continue
        timings = [f"{r[f'p50_ms_b{b}']:.2f} / {r[f'p95_ms_b{b}']:.2f}" for b in batch_sizes]
        cells = [r["name"], f"{r['accuracy']:.4f}", f"{r['accuracy_drop_points']:.2f}", str(r["bytes"]),
                 f"{r['size_reduction']:.2f}x", str(r["parameters"]), str(r["nonzero_parameters"]), *timings, r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def model_card(chosen: str, rows: list[dict], cfg: CompressConfig, data_version: dict[str, str], onnx: dict,
               recipe: dict) -> str:
    before = rows[0]
    after = next(r for r in rows if r["name"] == chosen)
    b = cfg.budgets
    latency = "none" if b.max_latency_ms is None else f"{b.max_latency_ms} ms (p50, batch {cfg.latency.budget_batch})"
    fp32 = onnx["fp32"]
    fallback = " (no candidate met every budget: the uncompressed model is shipped)" if chosen == "original" else ""
    lines = [
        "# Model card: compressed model", "",
        f"**Chosen:** `{chosen}`{fallback}",
        "", "## Files", "",
        "- `model.safetensors` + `model.json`: " + ("int8 tensors with their scales and zero points (layout in `encoding`), "
                                                     "rebuilt by `tasks.export.load_compressed`" if "quantization" in recipe
                                                     else "fp32 weights, loadable with `tasks.model_io.load_model`"),
        f"- `model.onnx`: {onnx['shipped']}; batch dimension dynamic, weights inside the file", "",
        "## Before and after (test split)", "",
        "| | accuracy | bytes | parameters | non-zero | p50 ms @" + str(cfg.latency.budget_batch) + " |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    key = f"p50_ms_b{cfg.latency.budget_batch}"
    for label, r in (("uncompressed", before), (chosen, after)):
        lines.append(f"| {label} | {r['accuracy']:.4f} | {r['bytes']} | {r['parameters']} | {r['nonzero_parameters']} "
                     f"| {r[key]:.2f} |")
    lines += [
        "", "## Budgets", "",
        f"- accuracy drop at most {b.max_accuracy_drop} points; size reduction at least {b.min_size_reduction}x; "
        f"latency at most {latency}",
        f"- selection among candidates within every budget: {cfg.select}; none within budget: {cfg.on_miss}", "",
        "## Candidates", "", candidates_markdown(rows, cfg.latency.batch_sizes),
        "## ONNX parity (onnxruntime on the test split)", "",
        f"- fp32 export vs PyTorch: max |logit diff| {fp32['max_abs_diff']:.2e} (allowed {fp32['atol']}), "
        f"argmax agreement {fp32['argmax_agreement']:.4f} (needed {fp32['min_argmax_agreement']})",
    ]
    if "int8" in onnx:
        q = onnx["int8"]
        lines.append(f"- onnxruntime int8 vs torch int8: argmax agreement {q['argmax_agreement']:.4f} "
                     f"(needed {q['min_argmax_agreement']}), onnxruntime int8 accuracy {q['accuracy']:.4f}")
    lines += ["", "## Data version (md5 of the inputs read)", ""]
    lines += [f"- `{path}`: `{digest}`" for path, digest in data_version.items()]
    lines += ["", "## How it was made", "", "```json", json.dumps(recipe, indent=2), "```",
              "", "## Params (`compress`)", "", "```json", json.dumps(cfg.model_dump(mode="json"), indent=2), "```", ""]
    return "\n".join(lines)
