"""`trainflow init`: a project folder anywhere on disk, from a table and a label column."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.config import load_params
from tests.real_data import DATASETS, digit_tree

TRAINFLOW = Path(sys.executable).parent / "trainflow"


def _penguins(folder: Path) -> Path:
    return DATASETS["penguins"].write(folder)  # real missing values and categories


def _init(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(cwd), "PATH": "/usr/bin:/bin"}  # no virtualenv on PATH: the console script finds its own
    return subprocess.run([str(TRAINFLOW), "init", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_init_makes_a_versioned_project_and_leaves_the_data_as_it_was(tmp_path):
    data = _penguins(tmp_path)
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    result = _init(tmp_path / "penguins", "--data", data, "--label", "species", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "penguins"
    params = load_params(project / "params.yaml")
    assert params.data.label == "species" and params.ingest.source.path == Path("data/penguins.csv")
    assert set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"]) >= {"ingest", "train", "evaluate"}
    assert (project / "data" / "penguins.csv.dvc").exists()
    log = subprocess.run(["git", "log", "--oneline"], cwd=project, capture_output=True, text=True)
    assert "trainflow init" in log.stdout  # dvclive needs a first commit
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before
    assert "next: cd " in result.stdout


@pytest.mark.parametrize(("setup", "args", "line"), [
    (lambda d: None, ["--label", "kind"], r"error: trainflow init: .*penguins\.csv: no column 'kind' \(--label\)"),
    (lambda d: (d / "penguins.csv").write_bytes(b"PK\x03\x04 not a table"), ["--label", "species"],
     r"error: trainflow init: .*penguins\.csv: is a ZIP archive \(an Excel \.xlsx workbook\?\)"),
    (lambda d: (d / "penguins.csv").write_text("bill,species\n1,Adelie\n2,Adelie\n3,Adelie\n"), ["--label", "species"],
     r"error: trainflow init: .*penguins\.csv: label column 'species' has 1 distinct value\(s\); a model needs 2"),
    (lambda d: (d / "project").mkdir() or (d / "project" / "params.yaml").write_text("mine: 1\n"), ["--label", "species"],
     r"error: trainflow init: .*project: already holds params\.yaml: choose another folder, or --force"),
])
def test_what_init_refuses_is_one_line_and_nothing_is_overwritten(tmp_path, setup, args, line):
    data = _penguins(tmp_path)
    setup(tmp_path)
    result = _init(tmp_path / "project", "--data", data, *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and __import__("re").match(line, result.stderr), result.stderr
    if (tmp_path / "project" / "params.yaml").exists():
        assert (tmp_path / "project" / "params.yaml").read_text() == "mine: 1\n"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DATASETS))
def test_a_new_project_builds_with_dvc_repro_outside_the_repository(tmp_path, name):
    """Naming only the data and the label: no hand edit, and the score the data set allows."""
    real = DATASETS[name]
    data = real.write(tmp_path)
    made = _init(tmp_path / name, "--data", data, "--label", real.label, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    project = tmp_path / name
    env = {"HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"}
    try:
        result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=project, env=env, capture_output=True)
        subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=project, env=env, capture_output=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert metrics[real.metric] >= real.needs, metrics
    assert json.loads((project / "reports" / "evaluate" / "gate.json").read_text())["promoted"]


def _digit_tree(folder: Path, count: int = 400) -> Path:
    return digit_tree(folder, count)


def test_init_on_a_folder_of_images_writes_a_manifest_and_an_image_declaration(tmp_path):
    tree = _digit_tree(tmp_path)
    result = _init(tmp_path / "digits_project", "--data", tree, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "digits_project"
    params = load_params(project / "params.yaml")
    assert params.data.modality == "image" and params.data.image_shape == (1, 8, 8)
    manifest = (project / "data" / "digits" / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,label" and len(manifest) == 401 and manifest[1].startswith("digit_0/")
    assert not (tree / "manifest.csv").exists()  # the user's folder is left as it was


@pytest.mark.parametrize(("spoil", "line"), [
    (lambda tree: (tree / "digit_1" / "9999.png").write_bytes(b"not a png"), r"9999\.png: not a readable image"),
    (lambda tree: __import__("PIL.Image").Image.new("L", (10, 12)).save(tree / "digit_2" / "big.png"),
     r"images of different sizes .* trainflow never resizes"),
])
def test_a_bad_image_folder_is_one_line(tmp_path, spoil, line):
    tree = _digit_tree(tmp_path, count=40)
    spoil(tree)
    result = _init(tmp_path / "project", "--data", tree, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert __import__("re").search(line, result.stderr), result.stderr


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("example", sorted(p.parent.name for p in (ROOT / "examples").glob("*/dvc.yaml")))
def test_each_examples_stages_are_what_the_package_writes(example):
    from flows.cli import write_stages

    assert write_stages(ROOT / "examples" / example, check=True), f"examples/{example}: run trainflow stages"


def test_trainflow_stages_follows_params_and_keeps_the_projects_own(tmp_path):
    from flows.cli import write_stages

    data = _penguins(tmp_path)
    assert _init(tmp_path / "p", "--data", data, "--label", "species", cwd=tmp_path).returncode == 0
    project = tmp_path / "p"
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    spec["stages"]["report"] = {"cmd": "cat reports/evaluate/report.md", "deps": ["reports/evaluate/report.md"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["compress"] = {"model": "train"}  # asking for compression ...
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert not write_stages(project)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["ingest", "validate", "repair", "augment", "train", "evaluate", "compress", "report"]
    assert stages["compress"]["deps"][0] == "models/train" and "finetune" not in stages  # ... adds its stage only
    params["evaluate"] = {"model": "finetune"}
    params["finetune"] = {"dataset": "source", "init_from": "scratch"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_stages(project)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "finetune" in stages and stages["finetune"]["deps"] == ["data/augmented", "data/repaired"]
    assert write_stages(project, check=True)


def test_init_on_an_existing_manifest_copies_only_the_images_it_names(tmp_path):
    tree = _digit_tree(tmp_path, count=60)
    (tree / "notes.txt").write_text("not an image, not named")
    named = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))[:50]
    (tree / "labels.csv").write_text("path,label\n" + "".join(f"{p},{p.split('/')[0]}\n" for p in named))
    result = _init(tmp_path / "project", "--data", tree / "labels.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "project"
    params = load_params(project / "params.yaml")
    assert params.ingest.source.kind == "image_manifest" and params.ingest.source.path == Path("data/labels/manifest.csv")
    copied = sorted(p.relative_to(project / "data" / "labels").as_posix() for p in (project / "data" / "labels").rglob("*.png"))
    assert copied == named and not (project / "data" / "labels" / "notes.txt").exists()
    assert (project / "data" / "labels.dvc").exists()


def test_a_manifest_path_outside_its_folder_is_one_line(tmp_path):
    tree = _digit_tree(tmp_path, count=20)
    first = next(tree.rglob("*.png")).relative_to(tree).as_posix()
    (tree / "labels.csv").write_text(f"path,label\n{first},a\n../elsewhere.png,b\n")
    result = _init(tmp_path / "project", "--data", tree / "labels.csv", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "line 3: path '../elsewhere.png' is not inside the manifest's folder" in result.stderr
    assert not (tmp_path / "project").exists()
