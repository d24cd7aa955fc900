"""The `trainflow` command. `trainflow init DIR --data FILE --label COLUMN` makes a project folder
anywhere on disk for a table (or `--data FOLDER` for images, one subfolder per class, a manifest
written for them; or `--data manifest.csv`, an existing one): the data copied in and versioned by
DVC, a params.yaml inferred from it (each choice with the reason), a dvc.yaml with the stages the
project needs, git with a first commit. `trainflow stages` rewrites those stages after an edit;
`trainflow predict` scores new rows (flows/predict.py); `trainflow ui` shows the Prefect UI of every
project (flows/_server.py).
Then `cd DIR && dvc repro` builds it. A mistake is one line on stderr and exit 2; nothing of the
user's is overwritten without --force.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.errors import UserError

KINDS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
IGNORED = ["/.prefect/", "/models/", "/reports/", "/checkpoints/", "/dvc_plots/", "/.cache/", "/data/predict/",
           "__pycache__/"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainflow", description="A declared, versioned training pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="make a project folder for a table", description=init_project.__doc__)
    init.add_argument("folder", type=Path, help="the project folder (made if absent)")
    init.add_argument("--data", type=Path, required=True,
                      help="a CSV or Parquet file, a folder of images with one subfolder per class, or a manifest "
                           "(a CSV of path,label naming images relative to its folder)")
    init.add_argument("--label", default="label", help="the column to predict (tables)")
    init.add_argument("--task", choices=("classification", "regression"),
                      help="what the label is (default: inferred; a fractional or many-valued number is regression)")
    init.add_argument("--init-from", metavar="WEIGHTS",
                      help="fine-tune from these weights instead of training from scratch: package:efficientnet-lite0 "
                           "(images), package:all-minilm-l6-v2, or a .safetensors file for the declared network")
    init.add_argument("--compress", action="store_true",
                      help="also a compress stage: quantized, pruned and distilled versions, the best within budgets")
    init.add_argument("--force", action="store_true", help="replace params.yaml and dvc.yaml of an existing project")
    stages = commands.add_parser("stages", help="rewrite dvc.yaml's trainflow stages from params.yaml",
                                 description=write_stages.__doc__)
    stages.add_argument("folder", type=Path, nargs="?", default=Path("."), help="the project folder (default: here)")
    stages.add_argument("--check", action="store_true", help="change nothing; exit 1 if dvc.yaml is not current")
    commands.add_parser("predict", add_help=False, help="score new rows with the champion (trainflow predict --help)")
    ui = commands.add_parser("ui", help="the Prefect UI of every trainflow project on this machine (make ui)")
    ui.add_argument("--stop", action="store_true", help="stop the shared Prefect server instead (make ui-stop)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:  # its options are flows/predict.py's own
        from flows.predict import main as predict

        return predict(argv[1:], prog="trainflow predict")
    args = parser.parse_args(argv)
    if args.command == "ui":
        from flows import _server

        return _server.stop() if args.stop else _server.ui()
    try:
        if args.command == "stages":
            current = write_stages(args.folder, check=args.check)
            state = "current" if current else "NOT current: run trainflow stages" if args.check else "rewritten"
            print(f"{args.folder / 'dvc.yaml'}: {state}")
            return 0 if current or not args.check else 1
        lines = init_project(args.folder, args.data, args.label, args.force, args.task, args.init_from, args.compress)
    except UserError as e:
        print(f"error: trainflow {args.command}: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def write_stages(folder: Path, check: bool = False) -> bool:
    """Rewrite the trainflow stages of FOLDER/dvc.yaml from its params.yaml (after editing params:
    a compress block adds the compress stage, a finetune from a packaged model drops train), keeping
    the project's own stages as they are. Returns whether the file was already current."""
    import yaml

    from tasks.config import load_params
    from tasks.declare import HEADER, PACKAGE_STAGES, project_stages, stages_yaml
    from tasks.io import save_text

    params_file, dvc_file = folder / "params.yaml", folder / "dvc.yaml"
    written = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.exists() else None
    params = load_params(params_file)
    old = dvc_file.read_text(encoding="utf-8") if dvc_file.exists() else ""
    own = {name: stage for name, stage in ((yaml.safe_load(old) or {}).get("stages") or {}).items()
           if name not in PACKAGE_STAGES}
    text = HEADER + "stages:\n" + stages_yaml(project_stages(params, written or {}))
    if own:
        text += "\n  # This project's own stages (trainflow stages keeps them as they are).\n" + stages_yaml(own)
    if text == old:
        return True
    if not check:
        save_text(text, dvc_file)
    return False


def init_project(folder: Path, data: Path, label: str, force: bool = False, task: str | None = None,
                 init_from: str | None = None, compress: bool = False) -> list[str]:
    """Infer the declaration from the data and write the project; returns what to tell the user."""
    from tasks.config import SourceConfig, load_params
    from tasks.declare import declare, declare_images, image_folder, image_manifest, is_manifest
    from tasks.ingest import read_source

    existing = [name for name in ("params.yaml", "dvc.yaml") if (folder / name).exists()]
    if existing and not force:
        raise UserError(f"{folder}: already holds {' and '.join(existing)}: choose another folder, or --force to replace them")
    copy = Path("data") / data.name
    weights = None
    if init_from and not init_from.startswith("package:") and init_from not in ("train", "scratch"):
        weights = Path(init_from)  # a weights file: copied in and versioned beside the data
        if not weights.is_file():
            raise UserError(f"--init-from {init_from}: no such file")
        init_from = (Path("weights") / weights.name).as_posix()
    manifest = data.is_file() and data.suffix.lower() == ".csv" and is_manifest(data)
    if compress and task == "regression":
        raise UserError("--compress: compression is for classifiers; a regression model is not compressed yet")
    if data.is_dir() or manifest:  # images: copied, with a manifest of path,label
        if task == "regression":
            raise UserError(f"{data}: images are read as classes: --task regression needs a table")
        files, shape = image_manifest(data) if manifest else image_folder(data)
        root = data.parent if manifest else data
        copy = Path("data") / (data.stem if manifest else data.name)
        declaration = declare_images(files, shape, copy / "manifest.csv", init_from, compress)
        folder.mkdir(parents=True, exist_ok=True)
        if manifest:  # the images it names, at the same relative paths; nothing else of their folder
            for path, _ in files:
                (folder / copy / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / path, folder / copy / path)
        else:
            shutil.copytree(data, folder / copy, dirs_exist_ok=force)
        rows = "".join(f"{_csv_field(path)},{_csv_field(label)}\n" for path, label in files)
        (folder / copy / "manifest.csv").write_text("path,label\n" + rows, encoding="utf-8")
    else:
        kind = KINDS.get(data.suffix.lower())
        if kind is None:
            raise UserError(f"{data}: trainflow init reads a .csv or .parquet file, or a folder of images (one subfolder "
                            f"per class)")
        frame = read_source(SourceConfig(kind=kind, path=data), None)
        declaration = declare(frame, copy, label, kind, task, init_from, compress)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        shutil.copyfile(data, folder / copy)  # the user's file stays as it is; DVC versions this copy
    if weights is not None:
        (folder / "weights").mkdir(exist_ok=True)
        shutil.copyfile(weights, folder / init_from)
    (folder / "params.yaml").write_text(declaration.params, encoding="utf-8")
    (folder / "dvc.yaml").write_text(declaration.dvc, encoding="utf-8")
    load_params(folder / "params.yaml")  # what init writes must parse: a failure here is a bug
    _ignore(folder / ".gitignore", IGNORED)
    _ignore(folder / ".dvcignore", ["/.prefect/", "__pycache__/", "*.py[cod]"])
    _versioned(folder, [copy, *([Path(init_from)] if weights else [])])
    return [f"trainflow init: {folder}", *(f"  {line}" for line in declaration.summary),
            "  params.yaml: the inferred declaration, each choice with its reason (edit freely)",
            f"  {copy}: your data, versioned by DVC ({copy}.dvc)",
            f"next: cd {folder} && dvc repro"]


def _csv_field(text: str) -> str:
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def _ignore(path: Path, patterns: list[str]) -> None:
    have = path.read_text().splitlines() if path.exists() else []
    missing = [p for p in patterns if p not in have]
    if missing:
        path.write_text("\n".join([*have, *missing]) + "\n")


def _versioned(folder: Path, data: list[Path]) -> None:
    """git and DVC for the folder (kept if there), the data under DVC, and a first commit: dvclive
    needs one, and the project's first state is then a revision to come back to."""
    def run(*cmd: str) -> None:
        result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
        if result.returncode:
            raise UserError(f"{folder}: '{' '.join(cmd)}' failed: {(result.stderr or result.stdout).strip()[-300:]}")

    if not (folder / ".git").exists():
        run("git", "init", "-q")
    dvc = (sys.executable, "-m", "dvc")  # this environment's DVC, whether or not it is activated
    if not (folder / ".dvc").exists():
        run(*dvc, "init", "-q")
    run(*dvc, "add", "-q", *map(str, data))
    run("git", "add", "-A")
    identity = subprocess.run(["git", "config", "user.email"], cwd=folder, capture_output=True).returncode == 0
    who = [] if identity else ["-c", "user.name=trainflow", "-c", "user.email=trainflow@localhost"]
    run("git", *who, "commit", "-q", "-m", "trainflow init")


if __name__ == "__main__":
    sys.exit(main())
