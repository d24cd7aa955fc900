"""Write docs/params.md, the reference of every params.yaml key, from the typed config.

Reads: the pydantic models in tasks/config.py (`Params` is the root): each field's type, default,
constraints (ge/gt/le/lt) and `Field(description=...)`. Writes: docs/params.md.

    python scripts/params_reference.py           # rewrite docs/params.md
    python scripts/params_reference.py --check   # exit 1 if docs/params.md is stale

Defaults are taken from the parent's default instance, so `finetune.trainer.max_epochs` shows the
20 that FinetuneConfig sets, not TrainerConfig's own 5. A section that is a union of models gets
one table per branch; a mapping or list of models gets one table for its entries.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python scripts/params_reference.py`: scripts/ is sys.path[0]
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

OUT = ROOT / "docs" / "params.md"
BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))

HEADER = """\
# params.yaml reference

Generated from the pydantic models in [tasks/config.py](../tasks/config.py) by
[scripts/params_reference.py](../scripts/params_reference.py): do not edit it by hand. After changing
a model, run `python scripts/params_reference.py`; `--check` (run by
[tests/test_docs.py](../tests/test_docs.py)) says whether this page is current.

Every key is optional unless its default says *required*. A default is what a key takes when
[params.yaml](../params.yaml) leaves it out; the shipped params.yaml sets several keys to other
values. An unknown key or a value outside its type or constraints stops the run before any work,
with one line naming the key (see [quickstart](quickstart.md#changing-params)). `[]` in a key marks
the entries of a list, `<name>` a key you choose.
"""


@dataclass
class Section:
    path: str
    doc: str
    rows: list[tuple[str, ...]] = field(default_factory=list)
    level: int = 2


# ------------------------------------------------------------------------------------- types
def _split_annotated(tp: Any) -> tuple[Any, list]:
    """(the bare type, its constraint metadata) of `Annotated[T, Field(gt=0)]`, else (tp, [])."""
    if typing.get_origin(tp) is Annotated:
        base, *extra = typing.get_args(tp)
        meta = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        return base, meta
    return tp, []


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def constraints(meta: list) -> str:
    found = [f"{sign} {_value(getattr(m, name))}" for m in meta for name, sign in BOUNDS if getattr(m, name, None) is not None]
    return ", ".join(found)


def type_name(tp: Any) -> str:
    """A reader's name for a type: Literal values listed, constraints inside unions and lists shown."""
    tp, meta = _split_annotated(tp)
    bounds = constraints(meta)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        name = "null"
    elif origin is Literal:
        name = " | ".join(f"`{_value(a)}`" for a in args)
    elif _is_union(tp):
        name = " | ".join(type_name(a) for a in sorted(args, key=lambda a: a is type(None)))
    elif origin is tuple and Ellipsis not in args:
        name = "[" + ", ".join(_inner(a) for a in args) + "]"
    elif origin in (list, tuple):
        name = f"list of {_inner(args[0])}"
    elif origin is dict:
        name = f"mapping of {_inner(args[0])} to {_inner(args[1])}"
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        name = "section"
    elif tp is Path:
        name = "path"
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} ({bounds})" if bounds and name else name


def _inner(tp: Any) -> str:
    """A type inside a list, mapping or tuple: a union in parentheses, so `list of (int | str)` reads one way."""
    name = type_name(tp)
    return f"({name})" if _is_union(_split_annotated(tp)[0]) or typing.get_origin(_split_annotated(tp)[0]) is Literal \
        and len(typing.get_args(_split_annotated(tp)[0])) > 1 else name


def _models(tp: Any) -> list[type[BaseModel]]:
    """The model classes directly inside a field's type (T, T | None, A | B)."""
    tp, _ = _split_annotated(tp)
    options = typing.get_args(tp) if _is_union(tp) else (tp,)
    return [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]


def _container_model(tp: Any) -> tuple[str, type[BaseModel]] | None:
    """('list', M) for list[M], ('dict', M) for dict[str, M] (also inside `| None`), else None."""
    tp, _ = _split_annotated(tp)
    options = [t for t in (typing.get_args(tp) if _is_union(tp) else (tp,)) if t is not type(None)]
    if len(options) != 1:
        return None
    origin, args = typing.get_origin(options[0]), typing.get_args(options[0])
    if origin is list and _models(args[0]):
        return "list", _models(args[0])[0]
    if origin is dict and _models(args[1]):
        return "dict", _models(args[1])[0]
    return None


# ------------------------------------------------------------------------------------ values
def _value(v: Any) -> str:
    """A value as it would be written in params.yaml (flow style)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, BaseModel):
        changed = {k: getattr(v, k) for k, f in type(v).model_fields.items()
                   if not f.is_required() and getattr(v, k) != f.get_default(call_default_factory=True)}
        return _value({(type(v).model_fields[k].alias or k): x for k, x in changed.items()})
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_value(k)}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, str) and (v == "" or v.strip() != v):
        return repr(v)
    return str(v)


def _default(info: FieldInfo, parent: BaseModel | None, name: str) -> tuple[str, Any]:
    """(shown default, the default object): the parent instance's value when there is one."""
    if parent is not None:
        v = getattr(parent, name)
    elif info.is_required():
        return "*required*", None
    else:
        v = info.get_default(call_default_factory=True)
    return ("see below" if isinstance(v, BaseModel) else f"`{_value(v)}`"), v


# ----------------------------------------------------------------------------------- walking
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _heading(path: str, note: str = "") -> str:
    return f"`{path}`" + (f" ({note})" if note else "")


def walk(model: type[BaseModel], instance: BaseModel | None, path: str, level: int, out: list[Section],
         note: str = "", intro: str = "") -> None:
    doc = " ".join((intro, " ".join((model.__doc__ or "").split()))).strip()
    section = Section(_heading(path, note) if path else "", doc, level=level)
    out.append(section)
    children: list[tuple] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        full = f"{path}.{key}" if path else key
        shown, value = _default(info, instance, name)
        bound = constraints(info.metadata)
        description = " ".join((info.description or "").split())
        kind = type_name(info.annotation)
        container, branches = _container_model(info.annotation), _models(info.annotation)
        if container:  # list[M] or dict[str, M]: one table for the entries
            shape, item = container
            sub = f"{full}[]" if shape == "list" else f"{full}.<name>"
            what = "Each entry of" if shape == "list" else "Each value of"
            children.append((item, None, sub, "", f"{what} `{full}` takes these keys."))
            description += f" Keys: [{_heading(sub)}](#{slug(_heading(sub))})."
        elif branches:  # M, M | None, or a union of sections: one table a branch
            nullable = type(None) in typing.get_args(_split_annotated(info.annotation)[0])
            tags, keys = [], []
            for branch in branches:
                tag, intro_ = _branch(info, branch, full) if len(branches) > 1 else ("", "")
                if nullable:
                    intro_ = f"`{full}` may be null; when it is a section, it takes these keys. {intro_}".strip()
                children.append((branch, value if isinstance(value, branch) else None, full, tag, intro_))
                tags.append(tag)
                keys.append(f"[{_heading(full, tag)}](#{slug(_heading(full, tag))})")
            description += f" Keys: {', '.join(keys)}."
            if len(branches) > 1:  # name each branch, not "section | section"
                kind = " | ".join([f"section ({t})" for t in tags] + (["null"] if nullable else []))
        section.rows.append((f"`{full}`", kind, shown, bound, description.strip()))
    for item, default, sub, tag, intro_ in children:
        walk(item, default, sub, level + (1 if level < 4 else 0), out, tag, intro_)


def _branch(info: FieldInfo, branch: type[BaseModel], full: str) -> tuple[str, str]:
    """(tag, intro) of one branch of a union of sections: told apart by its discriminator's value
    (`kind: ship`) when the field has one, else by its class name."""
    if isinstance(info.discriminator, str) and info.discriminator in branch.model_fields:
        values = typing.get_args(branch.model_fields[info.discriminator].annotation)
        if values:
            tag = f"{info.discriminator}: {' | '.join(map(_value, values))}"
            return tag, f"The keys of `{full}` when it has `{tag}`."
    return branch.__name__, f"The keys of `{full}` when it is a {branch.__name__} (one of several sections it may be)."


# ----------------------------------------------------------------------------------- writing
def _cell(text: str) -> str:
    """A table cell: pipes escaped; `<` before a letter escaped outside `code`, so it is not read as HTML."""
    parts = text.split("`")
    parts = [p if i % 2 else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", p) for i, p in enumerate(parts)]
    return "`".join(parts).replace("|", "\\|")


def render(root: type[BaseModel] | None = None) -> str:
    if root is None:
        from tasks.config import Params as root
    sections: list[Section] = []
    walk(root, root(), "", 1, sections)
    top, *rest = sections
    anchors = [slug(s.path) for s in rest]
    if len(set(anchors)) != len(anchors):  # GitHub would number the repeats and the links would miss
        raise ValueError(f"two sections share an anchor: {sorted(a for a in anchors if anchors.count(a) > 1)}")
    lines = [HEADER]
    lines.append("Sections: " + " · ".join(f"[{k}](#{slug(_heading(k))})" for k in (r[0].strip("`") for r in top.rows)) + "\n")
    if top.doc:
        lines.append(top.doc + "\n")
    for s in rest:
        lines.append(f"{'#' * s.level} {s.path}\n")
        if s.doc:
            lines.append(_cell(s.doc).replace("\\|", "|") + "\n")
        lines.append("| key | type | default | constraints | description |\n|---|---|---|---|---|")
        lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in s.rows)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def is_current(path: Path | None = None) -> bool:
    path = path or OUT
    return path.exists() and path.read_text(encoding="utf-8") == render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/params.md is not what this script writes")
    args = parser.parse_args(argv)
    if args.check:
        if is_current():
            return 0
        print(f"{OUT.relative_to(ROOT)} is stale: run python scripts/params_reference.py", file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
