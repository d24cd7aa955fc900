"""The documentation holds together: a short README that links every docs/ page, no broken relative
link or anchor, and a params reference that matches tasks/config.py. Fast, no network."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "benchmarks" / "README.md"]
README_LIMIT = 12_000  # bytes: a front page read in three minutes

INLINE = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)  # [label]: target
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")  # an inline code span: `[a](b)` inside one is no link
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _load_generator():
    spec = importlib.util.spec_from_file_location("params_reference", ROOT / "scripts" / "params_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def links(page: Path) -> list[str]:
    """Every link target in a page, outside code."""
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return INLINE.findall(text) + REFERENCE.findall(text)


def local(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)  # http:, https:, mailto:, ...


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for _, title in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
        seen[base] = n + 1
    return found


def test_readme_is_a_front_page():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail to docs/"


def test_there_are_docs_pages():
    assert {p.name for p in DOCS} >= {"quickstart.md", "params.md", "commands.md"}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_docs_page_is_linked_from_the_readme(page):
    targets = {(README.parent / t.split("#")[0]).resolve() for t in links(README) if local(t) and not t.startswith("#")}
    assert page.resolve() in targets, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = [t for t in links(page) if local(t) and not t.startswith("#")
              and not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_anchors_into_markdown_resolve(page):
    missing = []
    for target in links(page):
        if not local(target) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        file = (page.parent / path) if path else page
        if file.suffix == ".md" and file.exists() and anchor not in anchors(file):
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)}: anchors not found {missing}"


def test_params_reference_is_current():
    assert _load_generator().is_current(), "docs/params.md is stale: run python scripts/params_reference.py"


def test_params_reference_documents_every_key_of_the_config():
    from tasks.config import Params

    text = (ROOT / "docs" / "params.md").read_text(encoding="utf-8")
    for key in ("finetune.optimizer.lr", "validate.schema.columns.<name>.dtype", "compress.prune[].amount",
                "compress.distill.student.widths", "train.on_the_fly.mixup"):
        assert f"`{key}`" in text
    for name, info in Params.model_fields.items():
        assert f"## `{info.alias or name}`" in text
    assert "| `finetune.trainer.max_epochs` | int | `20` | >= 1 |" in text  # the parent's default, not the class's


class _Ship(BaseModel):
    """A boat."""

    kind: Literal["ship"] = "ship"
    crew: int = Field(3, ge=1, description="People aboard.")


class _Plane(BaseModel):
    """A plane."""

    kind: Literal["plane"] = "plane"
    wings: int = Field(2, gt=0, le=4, description="Wings.")


class _Trip(BaseModel):
    vehicle: _Ship | _Plane = Field(_Ship(), discriminator="kind", description="How to travel.")
    spare: _Ship | None = Field(None, description="A spare boat.")
    stops: list[_Plane] = Field(default_factory=list, description="Planes on the way.")
    note: Literal["a", "b"] | float = Field("a", description="A choice or a number.")


class _Root(BaseModel):
    trip: _Trip = Field(_Trip(), description="The trip.")


def test_the_generator_documents_each_branch_of_a_union_and_container_entries():
    text = _load_generator().render(_Root)
    assert "### `trip.vehicle` (kind: ship)" in text and "### `trip.vehicle` (kind: plane)" in text
    assert "| `trip.vehicle` | section (kind: ship) \\| section (kind: plane) | see below |" in text
    assert "| `trip.vehicle.crew` | int | `3` | >= 1 | People aboard. |" in text
    assert "| `trip.vehicle.wings` | int | `2` | > 0, <= 4 | Wings. |" in text
    assert "`trip.spare` may be null" in text and "| `trip.spare` | section \\| null | `null` |" in text
    assert "`trip.stops[].wings`" in text
    assert "| `trip.note` | `a` \\| `b` \\| float | `a` |" in text


def test_check_mode_exits_1_when_stale(tmp_path, monkeypatch):
    generator = _load_generator()
    stale = tmp_path / "params.md"
    stale.write_text("# old\n", encoding="utf-8")
    monkeypatch.setattr(generator, "OUT", stale)
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0 and generator.main(["--check"]) == 0
