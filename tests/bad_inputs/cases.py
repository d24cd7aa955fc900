"""The bad-input corpus: one row per case, each with the outcome trainflow promises for it.

A case names its base params (`tabular`: a small CSV table; `image`: the shrunk 8x8 digits config;
`digits_data`: the image config with ingest..augment already run, for the stages after them), the
input files it writes (path -> builder in make_inputs.py, or literal text), the params edits
(dotted key -> value; DELETE removes the key), the stages to run in order, and the outcome:
- `error`: the last stage exits non-zero with exactly one `error: ...` line matching this regex
  (which names the file/key/column and the problem), no traceback, inputs unchanged;
- `quarantine`: every stage succeeds and these ids sit in that split's quarantine with a reason
  matching the regex, and every input row is accounted for;
- `repair`: every stage succeeds and the ledger records this rule for these ids.
tests/e2e/test_bad_inputs.py runs each case as DVC would, one `python -m flows.<stage>` at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tests.bad_inputs import make_inputs as mk

DELETE = object()


@dataclass(frozen=True)
class Case:
    name: str
    base: str  # tabular | image | digits_data
    files: dict[str, Callable[[], bytes] | str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    stages: tuple[str, ...] = ("ingest",)
    error: str | None = None
    quarantine: dict | None = None  # {"split": "source/test", "ids": [...], "reason": regex}
    repair: dict | None = None  # {"column": ..., "rule": regex on the ledger's rule, "ids": [...]}
    absent: tuple[str, ...] = ()  # files that must never appear (a payload's marker)


CSV = {"ingest.source": {"kind": "csv", "path": "in.csv"}}
VALIDATE = ("ingest", "validate")
X2_RANGE = {"validate.schema.columns.x2": {"dtype": "float", "ge": 0, "le": 100}}
MANIFEST = {"ingest.source": {"kind": "image_manifest", "path": "images/manifest.csv"}}
INIT = "finetune.init_from"

CASES = [
    # ------------------------------------------------------------------------------ params
    Case("params_unknown_key", "tabular", {"in.csv": mk.good_csv}, {**CSV, "train.optimiser": {"lr": 0.1}},
         error=r"params\.yaml: train\.optimiser: unknown key \(allowed: .*optimizer"),
    Case("params_wrong_type", "tabular", {"in.csv": mk.good_csv}, {**CSV, "train.trainer.max_epochs": "six"},
         error=r"params\.yaml: train\.trainer\.max_epochs: got 'six'; .*integer"),
    Case("params_negative_learning_rate", "tabular", {"in.csv": mk.good_csv}, {**CSV, "train.optimizer.lr": -0.01},
         error=r"params\.yaml: train\.optimizer\.lr: got -0\.01; .*greater than 0"),
    Case("params_csv_without_path", "tabular", {"in.csv": mk.good_csv}, {"ingest.source": {"kind": "csv"}},
         error=r"params\.yaml: ingest\.source: .*path is required when kind is 'csv'"),
    # A missing section means its defaults (not an error); what must be given is checked instead:
    # the csv source's path (above) and a label column that exists.
    Case("params_label_names_an_absent_column", "tabular", {"in.csv": mk.good_csv}, {**CSV, "data.label": "target"},
         error=r"label column 'target' not found \(data\.label\)"),
    Case("params_unknown_finetune_strategy", "tabular", {"in.csv": mk.good_csv}, {**CSV, "finetune.strategy": "warp"},
         error=r"params\.yaml: finetune\.strategy: got 'warp'; .*linear_probe"),
    Case("params_unknown_imputer", "tabular", {"in.csv": mk.good_csv}, {**CSV, "repair.missing.strategy": "magic"},
         error=r"params\.yaml: repair\.missing\.strategy: got 'magic'"),
    Case("params_source_path_does_not_exist", "tabular", {}, {"ingest.source": {"kind": "csv", "path": "nope.csv"}},
         error=r"nope\.csv: source file not found \(ingest\.source\.path\)"),
    Case("params_not_yaml", "tabular", {"params.yaml": "data: {modality: tabular\ningest: [\n"},
         error=r"params\.yaml: not valid YAML"),
    Case("params_yaml_python_tag", "tabular", {"params.yaml": "data: !!python/object/apply:os.system ['touch PWNED_MARKER']\n"},
         error=r"params\.yaml: not valid YAML: could not determine a constructor", absent=("PWNED_MARKER",)),
    Case("params_split_leaves_nothing", "tabular", {"in.csv": mk.good_csv}, {**CSV, "ingest.split.val": 0.5, "ingest.split.test": 0.45},
         error=r"ingest\.split: .*leaves too little to train on"),

    # ------------------------------------------------------------------------------ tables
    Case("csv_empty_file", "tabular", {"in.csv": mk.empty}, CSV, error=r"in\.csv: source file is empty"),
    Case("csv_header_only", "tabular", {"in.csv": mk.header_only_csv}, CSV, error=r"in\.csv: source file has a header but no rows"),
    Case("parquet_truncated", "tabular", {"in.parquet": mk.truncated_parquet}, {"ingest.source": {"kind": "parquet", "path": "in.parquet"}},
         error=r"in\.parquet: cannot be read as parquet"),
    Case("csv_not_utf8", "tabular", {"in.csv": mk.latin1_csv}, CSV, error=r"in\.csv: not UTF-8 text \(byte \d+\)"),
    Case("csv_wrong_delimiter", "tabular", {"in.csv": mk.semicolon_csv}, CSV,
         error=r"in\.csv: one column only.*';'"),
    Case("csv_duplicate_column_names", "tabular", {"in.csv": mk.duplicate_columns_csv}, CSV,
         error=r"in\.csv: duplicate column names \['x1'\]"),
    Case("csv_label_column_missing", "tabular", {"in.csv": mk.no_label_csv}, CSV,
         error=r"label column 'label' not found \(data\.label\)"),
    Case("csv_one_class_only", "tabular", {"in.csv": mk.one_class_csv}, CSV, stages=VALIDATE,
         error=r"source/train: label column 'label' has one class only"),
    Case("csv_nan_labels_quarantined", "tabular", {"in.csv": mk.nan_labels_csv}, {**CSV, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE, quarantine={"split": "source/train", "ids": [3, 17, 31], "reason": r"label"}),
    Case("csv_inf_labels_quarantined", "tabular", {"in.csv": mk.inf_labels_csv}, {**CSV, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE, quarantine={"split": "source/*", "ids": [4, 18, 32], "reason": r"label"}),
    Case("csv_all_null_column", "tabular", {"in.csv": mk.all_null_column_csv}, CSV, stages=VALIDATE,
         error=r"source/train: column 'x2': every value is missing"),
    Case("csv_mixed_types_quarantined", "tabular", {"in.csv": mk.mixed_types_csv}, {**CSV, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE, quarantine={"split": "source/*", "ids": [2, 9], "reason": r"x1"}),
    Case("csv_text_where_numbers_expected", "tabular", {"in.csv": mk.text_in_numeric_csv}, CSV, stages=VALIDATE,
         error=r"column 'x2': wrong dtype: expected float, got text"),
    Case("csv_declared_column_missing", "tabular", {"in.csv": mk.good_csv}, {**CSV, "validate.schema.columns.age": {"dtype": "int"}},
         stages=VALIDATE, error=r"column 'age': declared in validate\.schema\.columns but not in the data"),
    Case("csv_out_of_range_quarantined", "tabular", {"in.csv": mk.out_of_range_csv}, {**CSV, **X2_RANGE, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE, quarantine={"split": "source/*", "ids": [7], "reason": r"x2: less_than_or_equal_to\(100"}),
    Case("csv_too_many_invalid_rows", "tabular", {"in.csv": mk.many_invalid_csv}, {**CSV, **X2_RANGE}, stages=VALIDATE,
         error=r"rows invalid .* > validate\.max_invalid_fraction=0\.05\); worst: column 'x2'"),
    Case("csv_sentinels_repaired", "tabular", {"in.csv": mk.sentinel_csv}, {**CSV, "validate.schema.missing_values": [-999]},
         stages=(*VALIDATE, "repair"), repair={"column": "x2", "rule": r"missing: ", "ids": [1, 8, 20]}),
    Case("category_unseen_in_train_quarantined", "tabular",
         {"data/raw/source/train.parquet": mk.raw_train, "data/raw/source/val.parquet": mk.raw_val,
          "data/raw/source/test.parquet": mk.raw_test}, {"validate.max_invalid_fraction": 0.25}, stages=("validate",),
         quarantine={"split": "source/test", "ids": [202, 205], "reason": r"color: known category.*purple"}),
    Case("category_unseen_in_train_set_missing", "tabular",
         {"data/raw/source/train.parquet": mk.raw_train, "data/raw/source/val.parquet": mk.raw_val,
          "data/raw/source/test.parquet": mk.raw_test}, {"validate.unknown_category": "missing", "repair.missing.strategy": "most_frequent"},
         stages=("validate", "repair"), repair={"column": "color", "rule": r"missing: ", "ids": [202, 205]}),

    # ------------------------------------------------------------------------------ images
    Case("image_corrupt_file", "image", {"images/manifest.csv": "path,label\na.png,0\nb.png,1\n", "images/a.png": mk.png_a,
                                         "images/b.png": mk.corrupt_png}, MANIFEST,
         error=r"manifest\.csv: row 3: b\.png: not a readable image"),
    Case("image_not_an_image", "image", {"images/manifest.csv": "path,label\na.png,0\nb.png,1\n", "images/a.png": mk.not_an_image,
                                         "images/b.png": mk.png_b}, MANIFEST,
         error=r"manifest\.csv: row 2: a\.png: not a readable image"),
    Case("image_zero_bytes", "image", {"images/manifest.csv": "path,label\na.png,0\nsub/b.png,1\n", "images/a.png": mk.png_a,
                                       "images/sub/b.png": mk.empty}, MANIFEST,
         error=r"manifest\.csv: row 3: sub/b\.png: empty file \(0 bytes\)"),
    Case("image_wrong_shape", "image", {"images/manifest.csv": "path,label\na.png,0\nb.png,1\nc.png,1\n", "images/a.png": mk.png_a,
                                        "images/b.png": mk.png_wrong_shape, "images/c.png": mk.png_wrong_shape}, MANIFEST,
         error=r"manifest\.csv: row 3: b\.png: wrong shape 10x12, data\.image_shape needs 8x8 \(and 1 more bad row"),
    Case("image_path_outside_data_folder", "image", {"images/manifest.csv": "path,label\na.png,0\n../secret.png,1\n",
                                                     "images/a.png": mk.png_a, "secret.png": mk.png_b}, MANIFEST,
         error=r"manifest\.csv: row 3: \.\./secret\.png: refused, resolves outside the manifest's folder"),
    Case("image_absolute_path", "image", {"images/manifest.csv": "path,label\n/etc/hostname,0\na.png,1\n", "images/a.png": mk.png_a},
         MANIFEST, error=r"manifest\.csv: row 2: /etc/hostname: refused, resolves outside"),
    Case("image_missing_file", "image", {"images/manifest.csv": "path,label\na.png,0\nnothere.png,1\n", "images/a.png": mk.png_a},
         MANIFEST, error=r"manifest\.csv: row 3: nothere\.png: file not found"),
    Case("image_manifest_without_label", "image", {"images/manifest.csv": "path\na.png\n", "images/a.png": mk.png_a},
         MANIFEST, error=r"manifest\.csv: manifest column 'label' missing"),
    Case("image_pixel_columns_vs_shape", "image", {}, {"data.image_shape": [1, 6, 6]}, stages=VALIDATE,
         error=r"source/train: image shape: 64 pixel columns, data\.image_shape \[1, 6, 6\] needs 36"),

    # ------------------------------------------------------------------------------ weights
    Case("weights_pickle_payload", "digits_data", {"weights.pt": mk.pickle_payload_pt}, {INIT: "weights.pt"}, stages=("finetune",),
         error=r"finetune\.init_from: weights\.pt: refused, not a plain state dict", absent=("PWNED_MARKER",)),
    Case("weights_not_weights", "digits_data", {"weights.safetensors": mk.text_as_safetensors}, {INIT: "weights.safetensors"},
         stages=("finetune",), error=r"weights\.safetensors: not a safetensors weights file"),
    Case("weights_wrong_shapes", "digits_data", {"weights.safetensors": mk.wrong_shapes_safetensors}, {INIT: "weights.safetensors"},
         stages=("finetune",), error=r"finetune\.init_from: weights\.safetensors: no tensor matched the network by name and shape"),
    Case("weights_file_missing", "digits_data", {}, {INIT: "gone.pth"}, stages=("finetune",),
         error=r"finetune\.init_from: gone\.pth: weights file not found"),
]
