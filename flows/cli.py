"""The `trainflow` command. `trainflow init DIR --data FILE --label COLUMN` makes a project folder
anywhere on disk for a table (or `--data FOLDER` for images, one subfolder per class, a manifest
written for them): the data copied in and versioned by DVC, a params.yaml inferred from it (each
choice with the reason), a dvc.yaml with the stages the project needs, git with a first commit.
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
IGNORED = ["/.prefect/", "/models/", "/reports/", "/checkpoints/", "/dvc_plots/", "__pycache__/"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainflow", description="A declared, versioned training pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="make a project folder for a table", description=init_project.__doc__)
    init.add_argument("folder", type=Path, help="the project folder (made if absent)")
    init.add_argument("--data", type=Path, required=True,
                      help="a CSV or Parquet file, or a folder of images with one subfolder per class")
    init.add_argument("--label", default="label", help="the column to predict (tables)")
    init.add_argument("--force", action="store_true", help="replace params.yaml and dvc.yaml of an existing project")
    args = parser.parse_args(argv)
    try:
        lines = init_project(args.folder, args.data, args.label, args.force)
    except UserError as e:
        print(f"error: trainflow init: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def init_project(folder: Path, data: Path, label: str, force: bool = False) -> list[str]:
    """Infer the declaration from the data and write the project; returns what to tell the user."""
    from tasks.config import SourceConfig, load_params
    from tasks.declare import declare, declare_images, image_folder
    from tasks.ingest import read_source

    existing = [name for name in ("params.yaml", "dvc.yaml") if (folder / name).exists()]
    if existing and not force:
        raise UserError(f"{folder}: already holds {' and '.join(existing)}: choose another folder, or --force to replace them")
    copy = Path("data") / data.name
    if data.is_dir():  # one subfolder of images per class: copied, with a manifest of path,label
        files, shape = image_folder(data)
        declaration = declare_images(files, shape, copy / "manifest.csv")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(data, folder / copy, dirs_exist_ok=force)
        manifest = "".join(f"{_csv_field(path)},{_csv_field(label)}\n" for path, label in files)
        (folder / copy / "manifest.csv").write_text("path,label\n" + manifest, encoding="utf-8")
    else:
        kind = KINDS.get(data.suffix.lower())
        if kind is None:
            raise UserError(f"{data}: trainflow init reads a .csv or .parquet file, or a folder of images (one subfolder "
                            f"per class)")
        frame = read_source(SourceConfig(kind=kind, path=data), None)
        declaration = declare(frame, copy, label, kind)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(exist_ok=True)
        shutil.copyfile(data, folder / copy)  # the user's file stays as it is; DVC versions this copy
    (folder / "params.yaml").write_text(declaration.params, encoding="utf-8")
    (folder / "dvc.yaml").write_text(declaration.dvc, encoding="utf-8")
    load_params(folder / "params.yaml")  # what init writes must parse: a failure here is a bug
    _ignore(folder / ".gitignore", IGNORED)
    _ignore(folder / ".dvcignore", ["/.prefect/", "__pycache__/", "*.py[cod]"])
    _versioned(folder, copy)
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


def _versioned(folder: Path, data: Path) -> None:
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
    run(*dvc, "add", "-q", str(data))
    run("git", "add", "-A")
    identity = subprocess.run(["git", "config", "user.email"], cwd=folder, capture_output=True).returncode == 0
    who = [] if identity else ["-c", "user.name=trainflow", "-c", "user.email=trainflow@localhost"]
    run("git", *who, "commit", "-q", "-m", "trainflow init")


if __name__ == "__main__":
    sys.exit(main())
