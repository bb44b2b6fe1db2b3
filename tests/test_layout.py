"""The repository's documentation matches the repository: README size and module tree, links
into docs/, the LICENSE, and no references to tracker tickets in what users read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGE = "clip_cir"
README_MAX_BYTES = 15_000
TICKET = re.compile(r"issue\s+#?[0-9]", re.IGNORECASE)
TEXT_SUFFIXES = {".py", ".js", ".html", ".css", ".json", ".md", ".txt", ".cfg", ".toml"}
TREE_PREFIX = "│├└─┬┼ \t"  # box-drawing characters some trees are drawn with, and indentation


def _fenced_blocks(markdown: str) -> list[str]:
    """The contents of every ``` fenced code block, in order."""
    blocks, current, fence = [], None, None
    for line in markdown.splitlines():
        stripped = line.strip()
        if current is None:
            match = re.match(r"^(`{3,}|~{3,})", stripped)
            if match:
                current, fence = [], match.group(1)
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            blocks.append("\n".join(current))
            current, fence = None, None
        else:
            current.append(line)
    return blocks


def parse_tree(block: str) -> set[str]:
    """Directories named in a tree drawn as an indented code block.

    A line whose first word ends in "/" names a directory; its parent is the nearest directory
    line above it with less indentation (box-drawing characters count as indentation). Other
    lines (files, descriptions, continuation lines) are ignored. Returns POSIX paths relative to
    the tree's roots, without the trailing slash: {"clip_cir", "clip_cir/data", ...}.
    """
    stack: list[tuple[int, str]] = []
    directories: set[str] = set()
    for line in block.splitlines():
        body = line.lstrip(TREE_PREFIX)
        if not body.strip():
            continue
        indent = len(line) - len(body)
        word = body.split()[0]
        if not word.endswith("/") or word == "/":
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = word.strip("/")
        path = f"{stack[-1][1]}/{name}" if stack else name
        stack.append((indent, path))
        directories.add(path)
    return directories


def package_directories() -> set[str]:
    """Every directory under clip_cir/ (itself included) that has an __init__.py."""
    found = {init.parent.relative_to(ROOT).as_posix() for init in (ROOT / PACKAGE).rglob("__init__.py")}
    return {d for d in found if "__pycache__" not in d.split("/")}


def readme_tree() -> set[str]:
    blocks = [b for b in _fenced_blocks(README.read_text(encoding="utf-8")) if f"{PACKAGE}/" in b]
    trees = [parse_tree(b) for b in blocks]
    trees = [t for t in trees if PACKAGE in t]
    assert trees, f"README.md has no fenced code block with a module tree rooted at {PACKAGE}/"
    return trees[0]


def _documentation_files() -> list[Path]:
    files = [README] + sorted((ROOT / "docs").rglob("*.md"))
    files += sorted(p for p in (ROOT / PACKAGE).rglob("*")
                    if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts)
    return files


# --- the tree parser itself -------------------------------------------------------------------------


def test_parse_tree_nesting_descriptions_and_box_drawing():
    block = """\
clip_cir/
  errors.py        a file: ignored
  data/            readers -> splits
  apps/            cli, quickstart
                   a continuation line of a description: ignored
    demo/          web app
      static/
  models/
other/
├── nested/
│   └── deeper/
└── sibling/
"""
    assert parse_tree(block) == {
        "clip_cir", "clip_cir/data", "clip_cir/apps", "clip_cir/apps/demo", "clip_cir/apps/demo/static",
        "clip_cir/models",
        "other", "other/nested", "other/nested/deeper", "other/sibling",
    }


def test_parse_tree_ignores_files_and_paths_that_are_not_directories():
    assert parse_tree("clip_cir/\n  errors.py\n  stage1/finetune.py  a script\n") == {"clip_cir"}


# --- (a) README size ----------------------------------------------------------------------------------


def test_readme_is_at_most_15000_bytes():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; keep it at most {README_MAX_BYTES} (depth: docs/)"


# --- (b) LICENSE --------------------------------------------------------------------------------------


def test_license_is_mit():
    license_file = ROOT / "LICENSE"
    assert license_file.is_file(), "LICENSE is missing"
    text = license_file.read_text(encoding="utf-8")
    assert "MIT License" in text
    assert "Permission is hereby granted, free of charge" in text


# --- (c) no tracker-ticket references ----------------------------------------------------------------


def test_no_ticket_references_in_package_readme_or_docs():
    offenders = []
    for path in _documentation_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if TICKET.search(line):
                offenders.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    assert not offenders, ("describe behaviour, not the ticket that asked for it:\n" + "\n".join(offenders))


# --- (d) the README's module tree ---------------------------------------------------------------------


def test_readme_module_tree_names_every_package_directory():
    named = readme_tree()
    missing = sorted(package_directories() - named)
    assert not missing, f"README.md's module tree does not name these package directories: {missing}"


def test_readme_module_tree_names_no_directory_that_does_not_exist():
    named = readme_tree()
    ghosts = sorted(d for d in named if (d == PACKAGE or d.startswith(PACKAGE + "/")) and not (ROOT / d).is_dir())
    assert not ghosts, f"README.md's module tree names directories that do not exist: {ghosts}"


# --- (e) links into docs/ -----------------------------------------------------------------------------


def test_readme_links_into_docs_resolve():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)\s#]*)(?:#[^)\s]*)?\)", text)
    assert targets, "README.md links to nothing under docs/"
    broken = sorted({t for t in targets if not (ROOT / t).is_file()})
    assert not broken, f"README.md links to missing files: {broken}"


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_docs_relative_links_resolve(page):
    path = ROOT / "docs" / page
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", path.read_text(encoding="utf-8"))
    local = [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    broken = sorted({t for t in local if not (path.parent / t).exists()})
    assert not broken, f"docs/{page} links to missing files: {broken}"


LAYERS = {"errors": 0, "constants": 0, "data": 1, "models": 2, "encoding": 3, "evaluation": 4, "params": 5,
          "training": 6, "api": 7, "apps": 8}
"""The package's layers, bottom to top: a module may import its own layer and those below."""
NOT_BELOW = {"api": {"params", "training"}}
"""Layers a layer may not import although they are below it: the Python API (`clip_cir.api`) is
built on data, models, encoding and evaluation only, not on the command lines' options or the
training programs (apps, above it, may import it)."""


def _clip_cir_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clip_cir":
            parts = node.module.split(".")
            found += [(node.lineno, parts[1])] if len(parts) > 1 else [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("clip_cir.")]
    return found


def test_imports_go_one_way_through_the_layers():
    """apps -> api -> training -> params -> evaluation -> encoding -> models -> data, lazy imports
    included; api imports neither training nor params."""
    package = ROOT / "clip_cir"
    assert set(LAYERS) == {p.name.removesuffix(".py") for p in package.iterdir()
                           if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"} - {"__init__"}
    upward = []
    for path in sorted(package.rglob("*.py")):
        layer = path.relative_to(package).parts[0].removesuffix(".py")
        if layer == "__init__":
            continue
        for line, target in _clip_cir_imports(ast.parse(path.read_text())):
            if LAYERS[target] > LAYERS[layer] or target in NOT_BELOW.get(layer, ()):
                upward.append(f"{path.relative_to(ROOT)}:{line} ({layer} imports {target})")
    assert not upward, upward
