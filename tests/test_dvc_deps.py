"""dvc.yaml's code deps cannot drift from the code a stage runs.

For each stage of the repository's dvc.yaml, the module its `cmd` runs (`python3 -m
flows.<stage>` or `python script.py`, found on the path the cmd gives it: its folder, then
PYTHONPATH) is read with `ast`, and its project imports (flows/, tasks/, lightning_modules/) are
followed transitively: top-level and inside functions, `from pkg import submodule`, relative
imports, and the `__init__.py` of every package on the way. Each file reached must be covered by a
dep (the file or a folder above it); otherwise DVC would keep a stale output after that file
changed. A dep that names a path that is neither on disk nor another stage's output fails too
(there, for examples/*/dvc.yaml as well: those are projects like a user's, running the installed
package, whose code is no dep of theirs).
Reads source only, imports nothing: well under a second.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "lightning_modules")  # the project's own code; anything else is third-party
DVC_FILES = [ROOT / "dvc.yaml", *sorted(ROOT.glob("examples/*/dvc.yaml"))]

# Runner infrastructure: code that starts a stage, not code the stage computes with. It cannot
# change what a successful run writes, so a change to it must not make DVC rerun the pipeline.
# Only these files and these import edges are exempt; everything else a stage imports is a dep.
NOT_DEPS = {
    # Imported before every stage: checks the interpreter has the packages, sets env defaults for
    # Prefect/DVC/torch homes and telemetry, and hands the stage to the warm runner.
    "flows/__init__.py",
    # The warm runner: runs `python -m flows.<stage>` in a fork of a preloaded process (same code, same argv).
    "flows/_warm.py",
    # The shared Prefect server a stage reports to (run_flow points Prefect at it), and its PostgreSQL.
    "flows/_server.py",
    "flows/_postgres.py",
    # How a stage's flow run is tagged, parented and recorded on that server.
    "flows/_runs.py",
}
NOT_DEP_EDGES = {
    # refuse_absent_hardware() calls tasks.train.hardware_plan() only to refuse an accelerator this machine
    # lacks, before the flow starts; its result is discarded. A stage that trains imports
    # tasks/train.py itself (and so lists it); the others must not rerun when it changes.
    ("flows/_stage.py", "tasks/train.py"),
}


def _substitute(text: str, variables: dict) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: str(variables[m.group(1)]), text)


def _variables(spec: dict) -> dict:
    variables = {}
    for entry in spec.get("vars") or []:
        assert isinstance(entry, dict), f"vars entry {entry!r}: only inline vars are understood by this test"
        variables.update(entry)
    return variables


def _paths(entries) -> list[str]:
    """Paths of deps/outs/metrics/plots entries (a string, or a one-key dict with options)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def stages() -> list[tuple[Path, str, dict, dict]]:
    """(dvc.yaml, stage name, stage, vars) for every stage of every dvc.yaml."""
    found = []
    for dvc_file in DVC_FILES:
        spec = yaml.safe_load(dvc_file.read_text())
        for name, stage in spec["stages"].items():
            assert "foreach" not in stage and "matrix" not in stage, f"{dvc_file}: {name}: templated stages are not read here"
            found.append((dvc_file, name, stage, _variables(spec)))
    return found


STAGES = stages()


def _id(dvc_file: Path, name: str) -> str:
    return f"{dvc_file.parent.relative_to(ROOT).as_posix()}:{name}".removeprefix(".:")


def _rel(path: Path) -> str:
    return path.resolve().relative_to(ROOT).as_posix()


def entry_point(cmd: str, wdir: Path) -> tuple[Path, tuple[Path, ...]]:
    """(the file the cmd runs, its import path) for `[VAR=v ...] python[3] (-m module | script.py)`."""
    words = shlex.split(cmd)
    env = {}
    while words and re.fullmatch(r"\w+=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words and re.fullmatch(r"python3?", words[0]), f"cmd {cmd!r}: not a python command"
    extra = [(wdir / p).resolve() for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if words[1] == "-m":  # sys.path[0] is the working directory
        path = (wdir.resolve(), *extra)
        file = resolve(words[2], path)
        assert file is not None, f"cmd {cmd!r}: module {words[2]} is not found on {[str(p) for p in path]}"
        return file, path
    script = (wdir / words[1]).resolve()  # sys.path[0] is the script's folder
    assert script.is_file(), f"cmd {cmd!r}: {script} does not exist"
    return script, (script.parent, *extra)


@functools.cache  # stages share most of their imports: each file is parsed and each module found once
def resolve(module: str, path: tuple[Path, ...]) -> Path | None:
    for folder in path:
        base = folder.joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
        if base.is_dir():  # a namespace package (tasks/ has no __init__.py)
            return base.resolve()
    return None


def _module_name(file: Path, path: tuple[Path, ...]) -> str | None:
    for folder in path:
        try:
            parts = file.with_suffix("").relative_to(folder).parts
        except ValueError:
            continue
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return None


@functools.cache
def _import_statements(file: Path) -> list[tuple[int, str | None, tuple[str, ...]]]:
    """(level, module, names) of every import statement in `file`, functions included; for a
    plain `import a.b`: (0, "a.b", ())."""
    found = []
    for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module, tuple(a.name for a in node.names if a.name != "*")))
    return found


def imported_modules(file: Path, path: tuple[Path, ...]) -> list[str]:
    """Every module `file` imports, as absolute dotted names: `import a.b` gives a and a.b (Python
    runs both), `from a import b` gives a and a.b (b may be a submodule, or just a name in a)."""
    own = _module_name(file, path) or ""
    package = own if file.name == "__init__.py" else own.rpartition(".")[0]
    names = []
    for level, module, imported in _import_statements(file):
        if level:  # relative: `from ..x import y` in package a.b.c is a.b.x
            base = package.split(".")[: len(package.split(".")) - level + 1] if package else []
            module = ".".join(base + ([module] if module else []))
        parts = module.split(".")
        names += [".".join(parts[: i + 1]) for i in range(len(parts))]
        names += [f"{module}.{name}" for name in imported]
    return names


def project_imports(entry: Path, path: tuple[Path, ...]) -> dict[str, list[str]]:
    """Every project file the entry point reaches -> the import chain (files) that reaches it first."""
    chains = {_rel(entry): [_rel(entry)]} if entry.is_relative_to(ROOT) else {}
    queue = [(entry, [_rel(entry)] if entry.is_relative_to(ROOT) else [entry.name])]
    module = _module_name(entry, path) or ""
    for i in range(1, module.count(".") + 1):  # `-m a.b.c` first imports a/__init__.py and a/b/__init__.py
        if (package := resolve(".".join(module.split(".")[:i]), path)) and package.is_file() and package.is_relative_to(ROOT):
            chains.setdefault(_rel(package), [*queue[0][1], _rel(package)])
            queue.append((package, chains[_rel(package)]))
    while queue:
        file, chain = queue.pop(0)
        if chain[-1] in NOT_DEPS:
            continue
        for module in imported_modules(file, path):
            target = resolve(module, path)
            if target is None or target.is_dir() or not target.is_relative_to(ROOT):
                continue  # third-party, a namespace folder, or a name that is no module (from x import function)
            rel = _rel(target)
            if rel.split("/")[0] not in PACKAGES or rel in chains or (chain[-1], rel) in NOT_DEP_EDGES:
                continue
            chains[rel] = [*chain, rel]
            queue.append((target, chains[rel]))
    return chains


@functools.cache
def _outs(dvc_file: Path) -> set[Path]:
    spec = yaml.safe_load(dvc_file.read_text())
    variables = _variables(spec)
    outs = set()
    for stage in spec["stages"].values():
        wdir = dvc_file.parent / stage.get("wdir", ".")
        for key in ("outs", "metrics", "plots"):
            outs |= {(wdir / _substitute(p, variables)).resolve() for p in _paths(stage.get(key))}
    return outs


OWN_CODE = [s for s in STAGES if s[0] == ROOT / "dvc.yaml"]


@pytest.mark.parametrize("dvc_file,name,stage,variables", OWN_CODE, ids=[_id(f, n) for f, n, _, _ in OWN_CODE])
def test_a_stage_lists_every_project_file_it_imports(dvc_file, name, stage, variables):
    wdir = dvc_file.parent / stage.get("wdir", ".")
    deps = [(wdir / _substitute(p, variables)).resolve() for p in _paths(stage.get("deps"))]
    entry, path = entry_point(_substitute(stage["cmd"], variables), wdir)
    where = f"{_id(dvc_file, name)} ({dvc_file.relative_to(ROOT)})"
    missing = [
        f"  {file}  (imported by: {' -> '.join(chain)})"
        for file, chain in sorted(project_imports(entry, path).items())
        if file not in NOT_DEPS and not any((ROOT / file).is_relative_to(dep) for dep in deps)
    ]
    assert not missing, f"stage {where}: project code it runs is not among its deps:\n" + "\n".join(missing)


@pytest.mark.parametrize("dvc_file,name,stage,variables", STAGES, ids=[_id(f, n) for f, n, _, _ in STAGES])
def test_every_dep_exists_or_is_made_by_a_stage(dvc_file, name, stage, variables):
    wdir = dvc_file.parent / stage.get("wdir", ".")
    outs = _outs(dvc_file)
    absent = [p for p in _paths(stage.get("deps"))
              if not (dep := (wdir / _substitute(p, variables)).resolve()).exists()
              and dep not in outs and not dep.with_name(dep.name + ".dvc").exists()]
    where = f"{_id(dvc_file, name)} ({dvc_file.relative_to(ROOT)})"
    assert not absent, f"stage {where}: deps that name no file, folder or stage output: {absent}"


def test_the_walk_follows_submodule_relative_and_function_imports(tmp_path):
    """The walker itself: it must find what each import form pulls in, or the tests above pass vacuously."""
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    files = {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "",
        "pkg/sub/sibling.py": "",
        "pkg/late.py": "",
        "pkg/entry.py": "from pkg.sub import leaf\nfrom . import late as _\n\ndef f():\n    from .sub.sibling import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    names = set(imported_modules(tmp_path / "pkg" / "entry.py", (tmp_path,)))
    assert {"pkg.sub", "pkg.sub.leaf", "pkg.late", "pkg.sub.sibling"} <= names
    assert {"pkg.sub.sibling.x"} <= names  # a name that resolves to no module is skipped by resolve()
    assert resolve("pkg.sub.sibling.x", (tmp_path,)) is None
    # And on the real tree: evaluate reaches the backbones through tasks.model_io; finetune imports
    # lightning_modules.transfer inside a function.
    chains = project_imports(ROOT / "flows" / "evaluate.py", (ROOT,))
    assert chains["lightning_modules/backbones.py"][:2] == ["flows/evaluate.py", "tasks/model_io.py"]
    assert "lightning_modules/transfer.py" in project_imports(ROOT / "flows" / "finetune.py", (ROOT,))
    assert "flows/_warm.py" not in chains  # flows/__init__.py is exempt, so what it imports is not followed


def test_the_allowlists_name_real_files_and_imports():
    """An exemption outlives its reason silently otherwise: each names a file, and each edge an import that exists."""
    assert all((ROOT / file).is_file() for file in NOT_DEPS), NOT_DEPS
    for importer, imported in NOT_DEP_EDGES:
        targets = {resolve(m, (ROOT,)) for m in imported_modules(ROOT / importer, (ROOT,))}
        assert (ROOT / imported).resolve() in targets, f"{importer} no longer imports {imported}: drop the exemption"
