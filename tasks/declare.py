"""`trainflow init`'s inference: a table in, the declaration of a project for it out.

Pure: a frame and what the user named (the file, the label column) in; the text of a params.yaml
and of a dvc.yaml out (flows/cli.py reads the data and writes the files). Every inferred choice
carries a comment saying what in the data led to it, so the user can judge and edit it:
- per column: dtype, nullable, the observed range widened by a margin, the categories, and values
  that look like sentinels (one repeated value far outside the rest, such as 99999999 or -999);
- repairs: missing values -> median imputation with indicators, long tails -> IQR clipping,
  class imbalance -> class weights, categories -> one-hot, numbers -> robust scaling;
- the task: classification, or regression for a label of fractional (or many distinct whole)
  numbers, which trains with mse and gates on beating the mean;
- a model that suits a table of this size: an MLP, trained with early stopping (a small CNN for
  images); with a starting model, a finetune stage beside a from-scratch baseline instead.
It also writes the dvc.yaml stages any project's params.yaml calls for (`project_stages`), which
`trainflow stages` rewrites after an edit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tasks.config import Params, parse_params
from tasks.errors import UserError

MAX_CATEGORIES = 50  # more distinct text values than this (and than 5% of rows): free text, left out
MARGIN = 0.1  # the declared range: the observed one widened by this share of its width on each side
SENTINELS = (-9, -99, -999, -9999, 999, 9999, 99999, 999999, 9999999, 99999999)


@dataclass
class Declaration:
    params: str  # params.yaml, with comments
    dvc: str  # dvc.yaml
    summary: list[str]  # what init tells the user, one line each


def declare(frame: pd.DataFrame, source: Path, label: str, kind: str, task: str | None = None,
            init_from: str | None = None, compress: bool = False) -> Declaration:
    """The project for a table read from `source` (a csv or parquet file) with `label` as the target.
    `task`: classification | regression | None (inferred: see `infer_task`); `init_from`: starting weights
    for a finetune stage (finetune.init_from), or None to train from scratch; `compress`: a compress
    stage for the evaluated model."""
    if label not in frame.columns:
        raise UserError(f"{source}: no column '{label}' (--label); columns are {list(map(str, frame.columns))[:12]}")
    labels = frame[label].dropna()
    if labels.nunique() < 2:
        raise UserError(f"{source}: label column '{label}' has {labels.nunique()} distinct value(s); a model needs 2 or more")
    task, why = (task, "--task") if task else infer_task(labels)
    if task == "regression" and not pd.api.types.is_numeric_dtype(labels):
        raise UserError(f"{source}: --task regression needs a numeric label; column '{label}' holds text "
                        f"(e.g. {labels.iloc[0]!r})")
    id_column = _id_column(frame, label)
    columns, notes, dropped = {}, {}, []
    for name in frame.columns:
        if name in (label, id_column):
            continue
        declared, note = _column(frame[name], len(frame))
        if declared is None:
            dropped.append(name)
        else:
            columns[str(name)], notes[str(name)] = declared, note
    if not columns:
        raise UserError(f"{source}: no usable feature column besides the label (and id)")
    if dropped:
        raise UserError(f"{source}: column(s) {dropped[:5]} hold free text (more than {MAX_CATEGORIES} distinct values); "
                        f"drop them from the file or encode them first")
    params = _params_text(frame, source, label, id_column, kind, columns, notes, task, why, init_from) \
        + _compress_lines(compress, init_from)
    target = (f"a number ({task}: {why})" if task == "regression" else f"with {labels.nunique()} classes")
    summary = [f"{len(frame)} rows, {len(columns)} features, label '{label}' {target}",
               f"id column: {id_column}" if id_column else "no id column: rows are numbered from 0"]
    return Declaration(params, dvc_yaml(params), summary)


MAX_CLASSES = 20  # a whole-number label with more distinct values than this is taken for a quantity


def infer_task(labels: pd.Series) -> tuple[str, str]:
    """classification or regression, and what in the labels said so."""
    if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        return "classification", "the label is text"
    if not (labels == labels.round()).all():
        return "regression", "the label holds fractional numbers"
    if labels.nunique() > MAX_CLASSES:
        return "regression", f"the label holds {labels.nunique()} distinct whole numbers"
    return "classification", f"the label holds {labels.nunique()} distinct whole numbers"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MODES = {"L": 1, "RGB": 3, "RGBA": 4}


def image_folder(folder: Path) -> tuple[list[tuple[str, str]], tuple[int, int, int]]:
    """The (relative path, class) of every image in a folder of one subfolder per class, and their
    common (C, H, W) shape. trainflow never resizes, so every image must have the same size."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f.relative_to(folder).as_posix(), d.name) for d in classes for f in sorted(d.rglob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise UserError(f"{folder}: expected one subfolder of PNG/JPEG images per class, found {len(classes)} "
                        f"subfolder(s) and {len(files)} image(s)")
    return files, image_shape(folder, files)


def is_manifest(path: Path) -> bool:
    """A CSV whose columns include path and label, its first path naming an image: an image manifest."""
    try:
        head = pd.read_csv(path, nrows=1, dtype=str, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError):
        return False  # not for this check to judge: reading it as a table names the problem
    return {"path", "label"} <= set(head.columns) and len(head) == 1 and \
        str(head["path"].iloc[0]).lower().endswith(IMAGE_SUFFIXES)


def image_manifest(manifest: Path) -> tuple[list[tuple[str, str]], tuple[int, int, int]]:
    """The (path, label) rows of an existing manifest (paths relative to its folder) and the images'
    common (C, H, W) shape."""
    frame = pd.read_csv(manifest, dtype=str, encoding="utf-8", keep_default_na=False)
    root = manifest.parent.resolve()
    for line, name in enumerate(frame["path"], start=2):
        if not name.strip() or not (root / name).resolve().is_relative_to(root):
            raise UserError(f"{manifest}: line {line}: path {name!r} is not inside the manifest's folder {root}")
    files = list(zip(frame["path"], frame["label"], strict=True))
    if frame["label"].nunique() < 2:
        raise UserError(f"{manifest}: column 'label' has {frame['label'].nunique()} distinct value(s); a model needs 2 or more")
    return files, image_shape(manifest.parent, files)


def image_shape(root: Path, files: list[tuple[str, str]]) -> tuple[int, int, int]:
    """The (C, H, W) every image shares; one line naming a file that cannot be read or is another size."""
    from PIL import Image, UnidentifiedImageError

    shapes = {}
    for name, _ in files:
        try:
            with Image.open(root / name) as image:
                image.load()
                shapes.setdefault((MODES.get(image.mode, 3), image.size[1], image.size[0]), name)
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{root / name}: not a readable image ({type(e).__name__}): remove or replace it") from None
    if len(shapes) > 1:
        (first, a), (second, b) = list(shapes.items())[:2]
        raise UserError(f"{root}: images of different sizes ({a} is {first[1]}x{first[2]}, {b} is {second[1]}x{second[2]}): "
                        f"trainflow never resizes; make them one size first")
    return next(iter(shapes))


def declare_images(files: list[tuple[str, str]], shape: tuple[int, int, int], manifest: Path,
                   init_from: str | None = None, compress: bool = False) -> Declaration:
    """The project for a folder of images whose manifest (path,label) is at `manifest`."""
    counts = pd.Series([label for _, label in files]).value_counts()
    ratio = counts.max() / counts.min()
    channels, height, width = shape
    pixels = channels * height * width
    epochs = 30 if len(files) < 5000 else 15
    lines = [
        f"# Made by `trainflow init` from a folder of {len(files)} images in {len(counts)} classes (one subfolder each).",
        "# Each inferred choice says what in the data led to it: edit any of them. Every key: trainflow's docs/params.md.",
        "",
        "data:",
        "  modality: image",
        f"  label: label  # {', '.join(f'{k} {v}' for k, v in counts.head(6).items())}{', ...' if len(counts) > 6 else ''}",
        "  id: id  # rows are numbered in the manifest's order",
        f"  image_shape: [{channels}, {height}, {width}]  # every image is {height}x{width} with {channels} channel(s)",
        "  pixel_range: [0, 255]",
        "",
        "ingest:",
        f"  source: {{kind: image_manifest, path: {_yaml(manifest.as_posix())}}}",
        "  split: {val: 0.15, test: 0.2, seed: 42}",
        "  datasets: {}",
        "",
        "validate:",
        "  max_invalid_fraction: 0.05",
        "  schema: {}",
        "",
        "repair:",
        "  missing: {strategy: median}",
        f"  imbalance: class_weight{_comment(f'largest class {ratio:.1f}x the smallest')}" if ratio > 1.5
        else f"  imbalance: none{_comment(f'classes within {ratio:.1f}x of each other')}",
        "",
        "augment:                     # one rotated, shifted, zoomed, noisy copy of each train image",
        "  copies: 1",
        "  rotation_deg: 10",
        "",
        "train:",
        "  dataset: source",
        "  seed: 42",
        f"  backbone: {{kind: cnn, widths: [32, 64], pool: 1, hidden: 128, dropout: 0.25}}  # {pixels} pixels an image",
        "  optimizer: {name: adam, lr: 0.002, weight_decay: 0.0001}",
        f"  trainer: {{max_epochs: {epochs}, batch_size: 64, early_stopping_patience: 6, restore_best: true}}",
        "",
        *_finetune_lines(init_from, "  optimizer: {name: adam, lr: 0.002, weight_decay: 0.0001}",
                         f"  trainer: {{max_epochs: {epochs}, batch_size: 64, early_stopping_patience: 6, restore_best: true}}"),
        "evaluate:",
        f"  model: {'finetune' if init_from else 'train'}",
        "",
    ]
    summary = [f"{len(files)} images of {height}x{width}, {channels} channel(s), in {len(counts)} classes",
               f"manifest: {manifest.as_posix()}"]
    params = "\n".join(lines) + _compress_lines(compress, init_from)
    return Declaration(params, dvc_yaml(params), summary)


def _id_column(frame: pd.DataFrame, label: str) -> str | None:
    """The first column named like an id whose values are unique and present on every row."""
    for name in frame.columns:
        if name == label:
            continue
        lowered = str(name).lower()
        if lowered in ("id", "rownames", "row_id", "index") or lowered.endswith("_id"):
            if frame[name].notna().all() and frame[name].is_unique:
                return str(name)
    return None


def _column(series: pd.Series, rows: int) -> tuple[dict | None, str]:
    present = series.dropna()
    missing = len(series) - len(present)
    notes = [f"{missing} missing ({missing / rows:.1%})"] if missing else []
    if pd.api.types.is_bool_dtype(present):
        return {"dtype": "category"}, "; ".join(["true/false", *notes])
    if pd.api.types.is_numeric_dtype(present) and len(present):
        declared, note = _numeric(present)
        return declared, "; ".join([note, *notes])
    categories = present.astype("str").value_counts()
    if len(categories) > max(MAX_CATEGORIES, 0.05 * rows):
        return None, ""
    shown = ", ".join(f"{k} {v}" for k, v in categories.head(4).items()) + (", ..." if len(categories) > 4 else "")
    return {"dtype": "category"}, "; ".join([f"{len(categories)} categories: {shown}", *notes])


def _numeric(present: pd.Series) -> tuple[dict, str]:
    values = present.to_numpy(dtype=float)
    integral = bool(np.all(values == np.round(values)))
    sentinel = _sentinel(values)
    real = values[values != sentinel] if sentinel is not None else values
    low, high = float(real.min()), float(real.max())
    width = high - low or abs(high) or 1.0
    ge, le = low - MARGIN * width, high + MARGIN * width
    if low >= 0:
        ge = max(ge, 0.0)  # never negative: a count or an amount stays so
    declared = {"dtype": "int" if integral else "float", "ge": _round(ge, integral, math.floor),
                "le": _round(le, integral, math.ceil)}
    note = f"{_fmt(low)} .. {_fmt(high)} seen"
    if sentinel is not None:
        declared["missing_values"] = [int(sentinel)]  # the codes are whole numbers
        note += f"; {_fmt(sentinel)} looks like a sentinel for missing ({int((values == sentinel).sum())} rows)"
    return declared, note


def _sentinel(values: np.ndarray) -> float | None:
    """A sentinel-looking code: repeated, far outside the range of every other value."""
    for code in SENTINELS:
        hit = values == code
        if hit.sum() >= 2 and hit.mean() < 0.5:
            rest = values[~hit]
            spread = rest.max() - rest.min() or 1.0
            if code > rest.max() + 3 * spread or code < rest.min() - 3 * spread:
                return float(code)
    return None


def _round(value: float, integral: bool, how) -> int | float:
    return int(how(value)) if integral else float(f"{value:.4g}")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _params_text(frame: pd.DataFrame, source: Path, label: str, id_column: str | None, kind: str,
                 columns: dict, notes: dict, task: str, why: str, init_from: str | None) -> str:
    regression = task == "regression"
    counts = frame[label].value_counts()
    labels = frame[label].dropna()
    about_label = (f"{_fmt(labels.min())} .. {_fmt(labels.max())}, mean {_fmt(round(labels.mean(), 4))}" if regression
                   else ", ".join(f"{k} {v}" for k, v in counts.head(6).items()))
    numeric = [c for c, d in columns.items() if d["dtype"] in ("int", "float")]
    categorical = [c for c, d in columns.items() if d["dtype"] == "category"]
    missing = {c: int(frame[c].isna().sum()) for c in columns if frame[c].isna().any()}
    skewed = {c: float(frame[c].skew()) for c in numeric if abs(float(frame[c].skew() or 0.0)) > 2}
    ratio = counts.max() / counts.min()
    rows = len(frame)
    lines = [
        f"# Made by `trainflow init` from {source.name}: {rows} rows, {len(columns)} features, label '{label}'.",
        "# Each inferred choice says what in the data led to it: edit any of them. Every key: trainflow's docs/params.md.",
        "",
        "data:",
        "  modality: tabular",
        f"  label: {_yaml(label)}{_comment(about_label)}",
        *([f"  task: regression           # {why}: trained with mse, scored by RMSE, MAE and R2"] if regression else []),
        f"  id: {_yaml(id_column or 'id')}"
        + ("  # unique on every row" if id_column else "  # none in the file: rows are numbered from 0"),
        "  image_shape: null",
        "",
        "ingest:",
        f"  source: {{kind: {kind}, path: {_yaml(str(source))}}}",
        "  split: {val: 0.15, test: 0.2, seed: 42}",
        "  datasets: {}",
        "",
        "validate:",
        "  max_invalid_fraction: 0.05",
        "  schema:",
        "    extra_columns: forbid    # a column that appears later is an error, not a silent new feature",
        "    columns:",
    ]
    width = max(len(c) for c in columns) + 2
    for name, declared in columns.items():
        body = ", ".join(f"{k}: {_yaml(v)}" for k, v in declared.items())
        lines.append(f"      {_yaml(name) + ':':<{width}} {{{body}}}{_comment(notes[name])}")
    lines += ["", "repair:"]
    lines.append("  missing: {strategy: median, indicators: true}" + _comment(
        f"{len(missing)} column(s) with missing values: " + ", ".join(f"{c} {n}" for c, n in list(missing.items())[:4]))
        if missing else "  missing: {strategy: median}  # no missing value seen")
    lines.append("  outliers: {method: iqr, action: clip, threshold: 3.0}" + _comment(
        "long tails: " + ", ".join(f"{c} skew {s:.1f}" for c, s in list(skewed.items())[:4]))
        if skewed else "  outliers: {method: none}  # no long tail seen")
    lines.append(f"  encode: onehot{_comment(f'{len(categorical)} categorical column(s)')}" if categorical
                 else "  encode: none")
    lines.append("  scale: robust             # median/IQR from train: an MLP learns best from comparable ranges")
    if not regression:
        lines.append(f"  imbalance: class_weight{_comment(f'largest class {ratio:.1f}x the smallest')}" if ratio > 1.5
                     else f"  imbalance: none{_comment(f'classes within {ratio:.1f}x of each other')}")
    epochs = 60 if rows < 2000 else 40 if rows < 20000 else 20
    batch = 64 if rows < 2000 else 256
    lines += [
        "",
        "augment:",
        "  copies: 0                  # tables: no synthetic rows",
        "  noise_std: 0.0",
        "",
        "train:",
        "  dataset: source",
        "  seed: 42",
        "  backbone: {kind: mlp, widths: [64, 64], dropout: 0.2}  # a table: two hidden layers of 64",
        "  optimizer: {name: adam, lr: 0.003, weight_decay: 0.0001}",
        f"  trainer: {{max_epochs: {epochs}, batch_size: {batch}, early_stopping_patience: 10, restore_best: true}}"
        f"  # {rows} rows",
        "",
        *_finetune_lines(init_from, "  optimizer: {name: adam, lr: 0.003, weight_decay: 0.0001}",
                         f"  trainer: {{max_epochs: {epochs}, batch_size: {batch}, early_stopping_patience: 10, "
                         "restore_best: true}"),
        "evaluate:",
        f"  model: {'finetune' if init_from else 'train'}",
        *(["  gate: {min: {r2: 0.0}}    # promote only a model that beats predicting the mean (R2 above 0 on test)"]
          if regression else []),
        "",
    ]
    return "\n".join(lines)


def _compress_lines(compress: bool, init_from: str | None) -> str:
    """--compress: quantization, pruning and a distilled student of the evaluated model, each measured
    and judged against the default budgets (docs/compression.md)."""
    if not compress:
        return ""
    model = "finetune" if init_from else "train"
    return (f"compress:                     # --compress: cheaper versions of the {model} model, the best within "
            f"budgets\n  model: {model}\n")


def _finetune_lines(init_from: str | None, optimizer: str, trainer: str) -> list[str]:
    """--init-from: the model starts from those weights (no train stage), beside the same network
    trained from scratch on the same rows, so evaluate reports what the start was worth."""
    if not init_from:
        return []
    return ["finetune:", "  dataset: source",
            f"  init_from: {_yaml(init_from)}  # --init-from: fine-tuned from these weights instead of trained from scratch",
            "  labels_per_class: null     # every labelled train row",
            "  baseline: true             # also from scratch on the same rows: evaluate reports the gain",
            "  backbone_lr_ratio: 1.0", optimizer, trainer, ""]


def _comment(text: str) -> str:
    return f"  # {text}" if text else ""


def _yaml(value) -> str:
    """A value as one line of YAML flow text: plain when safe, else quoted."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


# ------------------------------------------------------------------------------------- dvc.yaml
PACKAGE_STAGES = ("ingest", "validate", "repair", "augment", "train", "finetune", "evaluate", "compress")
HEADER = ("# The package's stages, written by trainflow (tasks/declare.py `project_stages`) from params.yaml:\n"
          "# each runs the installed trainflow (`python3 -m flows.<stage>`) and reads the params keys listed.\n")


def project_stages(params: Params, written: dict) -> dict[str, dict]:
    """The stages a project needs, by what its params.yaml (`written`, as read) asks for: train when
    its model is evaluated or fine-tuned from; finetune when its model is evaluated or compressed;
    compress when params.yaml has a compress block. Params keys are listed only where params.yaml
    writes them (DVC refuses a listed key that is absent; an absent key keeps the default)."""
    def keys(*names: str) -> list[str]:
        return [name for name in names if _written(written, name)]

    compress = "compress" in written
    models = {params.evaluate.model} | ({params.compress.model} if compress else set())
    if "finetune" in models and params.finetune.init_from == "train":
        models.add("train")
    source = params.ingest.source
    source_deps = [] if source.path is None else \
        [(source.path.parent if source.kind == "image_manifest" else source.path).as_posix()]
    # Reports are cached outputs like the data (no `cache: false`): DVC reads a past revision's or an
    # experiment's metrics and plots from the cache (by dvc.lock's hash), and `dvc exp run --queue` checks
    # them out in its temporary copy instead of rerunning a stage whose reports it cannot restore.
    stages = {
        "ingest": {"deps": source_deps, "params": keys("data", "ingest"), "outs": ["data/raw"],
                   "metrics": ["reports/ingest.json"]},
        "validate": {"deps": ["data/raw"], "params": keys("data", "ingest.datasets", "validate"),
                     "outs": ["data/validated", "reports/validate/report.json", "reports/validate/report.md"],
                     "metrics": ["reports/validate/metrics.json"]},
        "repair": {"deps": ["data/validated"], "params": keys("data", "validate.schema", "repair"),
                   "outs": ["data/repaired", "reports/repair/summary.md"],
                   "metrics": ["reports/repair/summary.json"]},
        "augment": {"deps": ["data/repaired"], "params": keys("data", "augment"), "outs": ["data/augmented"],
                    "metrics": ["reports/augment.json"]},
    }
    if "train" in models:
        stages["train"] = {"deps": ["data/augmented", "data/repaired"], "params": keys("data", "repair.imbalance", "train"),
                           "outs": ["models/train"], "metrics": ["reports/train/train_metrics.json"],
                           "plots": ["reports/train/train_history.csv"]}
    if "finetune" in models:
        start = params.finetune.init_from
        starting = ["models/train"] if start == "train" else [] if start == "scratch" or start.startswith("package:") \
            else [start]
        stages["finetune"] = {
            "deps": [*starting, "data/augmented", "data/repaired"],
            "params": keys("data", "repair.imbalance", "train.backbone", "train.dataset", "augment", "finetune"),
            "outs": ["models/finetune", "data/finetune/labelled_ids.parquet", "reports/finetune/transfer.json"],
            "metrics": ["reports/finetune/finetune_metrics.json", "reports/finetune/scratch_metrics.json"],
            "plots": ["reports/finetune/finetune_history.csv", "reports/finetune/scratch_history.csv"]}
    stages["evaluate"] = {
        "deps": [f"models/{params.evaluate.model}", "data/repaired"], "params": keys("data", "evaluate"),
        "outs": [f"reports/evaluate/{name}" for name in ("report.md", "details.json", "gate.json", "figures")],
        "metrics": ["reports/evaluate/metrics.json"], "plots": ["reports/evaluate/plots"]}
    if compress:
        labelled = ["data/finetune/labelled_ids.parquet"] if params.compress.model == "finetune" else []
        stages["compress"] = {
            "deps": [f"models/{params.compress.model}", *labelled, "data/repaired", "data/augmented"],
            "params": keys("data", "augment", "compress"),
            "outs": ["models/compressed", "reports/compress/candidates.json", "reports/compress/candidates.md"],
            "metrics": ["reports/compress/metrics.json"]}
    return {name: {"cmd": f"python3 -m flows.{name}", **{k: v for k, v in stage.items() if v}}
            for name, stage in stages.items()}


def _written(written: dict, dotted: str) -> bool:
    node = written
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def stages_yaml(stages: dict[str, dict]) -> str:
    """`stages` as dvc.yaml text: one flow-style line a key, a blank line between stages."""
    lines = []
    for name, stage in stages.items():
        lines.append(f"  {name}:")
        lines += [f"    {key}: {_yaml(value)}" for key, value in stage.items()]
        lines.append("")
    return "\n".join(lines)


def dvc_yaml(params_text: str) -> str:
    """A new project's dvc.yaml: the package's stages for the params.yaml text init wrote."""
    written = yaml.safe_load(params_text)
    return HEADER + "stages:\n" + stages_yaml(project_stages(parse_params(written), written))
