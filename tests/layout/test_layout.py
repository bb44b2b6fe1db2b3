"""The repository's documentation matches the repository: README size and module tree, links
into docs/, the LICENSE, and no references to tracker tickets in what users read; the package's
imports go one way through its layers, without cycles; the tests are laid out like the package,
and no test file imports another (what they share is in tests/helpers.py and tests/conftest.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import REPO

README = REPO / "README.md"
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


def tree_entries(block: str) -> dict[str, str]:
    """Directories named in a tree drawn as an indented code block, each with the text written in
    it: its own line and the lines of the files and descriptions inside it.

    A line whose first word ends in "/" names a directory; its parent is the nearest directory
    line above it with less indentation (box-drawing characters count as indentation). Any other
    line (a file, a continuation of a description) belongs to that nearest directory above it
    with less indentation; lines before the first directory are ignored. Keys are POSIX paths
    relative to the tree's roots, without the trailing slash: {"clip_cir": "...", "clip_cir/data": ...}.
    """
    stack: list[tuple[int, str]] = []
    entries: dict[str, str] = {}
    for line in block.splitlines():
        body = line.lstrip(TREE_PREFIX)
        if not body.strip():
            continue
        indent = len(line) - len(body)
        word = body.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if word.endswith("/") and word != "/":
            name = word.strip("/")
            path = f"{stack[-1][1]}/{name}" if stack else name
            stack.append((indent, path))
            entries[path] = body
        elif stack:
            entries[stack[-1][1]] += "\n" + body
    return entries


def parse_tree(block: str) -> set[str]:
    """Directories named in a tree drawn as an indented code block (see `tree_entries`):
    {"clip_cir", "clip_cir/data", ...}."""
    return set(tree_entries(block))


def package_directories() -> set[str]:
    """Every directory under clip_cir/ (itself included) that has an __init__.py."""
    found = {init.parent.relative_to(REPO).as_posix() for init in (REPO / PACKAGE).rglob("__init__.py")}
    return {d for d in found if "__pycache__" not in d.split("/")}


def readme_tree() -> set[str]:
    blocks = [b for b in _fenced_blocks(README.read_text(encoding="utf-8")) if f"{PACKAGE}/" in b]
    trees = [parse_tree(b) for b in blocks]
    trees = [t for t in trees if PACKAGE in t]
    assert trees, f"README.md has no fenced code block with a module tree rooted at {PACKAGE}/"
    return trees[0]


DEVELOPMENT = REPO / "docs" / "development.md"


def test_development_page_tree_is_the_package():
    """docs/development.md's package tree names exactly the package's directories, and every
    module file it names at the top exists."""
    block = next(b for b in _fenced_blocks(DEVELOPMENT.read_text(encoding="utf-8")) if b.startswith(f"{PACKAGE}/\n"))
    named, actual = parse_tree(block), package_directories()
    assert named == actual, (sorted(actual - named), sorted(named - actual))
    files = [line.split()[0] for line in block.splitlines()[1:] if line.split() and line.split()[0].endswith(".py")]
    assert files and all((REPO / PACKAGE / f).is_file() for f in files), files


def _prose(markdown: str) -> str:
    """The page without its fenced code blocks."""
    return re.sub(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", "", markdown, flags=re.MULTILINE | re.DOTALL)


def package_descriptions(markdown: str) -> dict[str, str]:
    """The bullets of the page's "The package" section, by what each one describes: the text of
    "- **`data/`**: ..." (its continuation lines included) under "data/", of "- **`errors.py`**"
    under "errors.py"."""
    section = markdown.split("\n## The package\n", 1)[1].split("\n## ", 1)[0]
    bullets = re.findall(r"^- \*\*`([\w.]+/?)`\*\*(.*?)(?=^\S|\Z)", _prose(section), flags=re.MULTILINE | re.DOTALL)
    return {name: text for name, text in bullets}


def modules_missing_from_descriptions(package: Path, descriptions: dict[str, str]) -> list[str]:
    """Module files of `package` (no `__init__.py`: a package is named by its directory) that its
    descriptions do not name in their place: a top-level module by a bullet of its own; a module of
    `data/` as `name.py` in data/'s bullet, one of `data/synthetic/` as `name.py` after the bullet's
    first `synthetic/`."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        if path.name == "__init__.py" or "__pycache__" in parts:
            continue
        if len(parts) == 1:
            found = path.name in descriptions
        else:
            text = descriptions.get(parts[0] + "/", "")
            for sub in parts[1:-1]:
                text = text.partition(f"`{sub}/`")[2]
            found = f"`{path.name}`" in text
        if not found:
            missing.append(path.relative_to(package.parent).as_posix())
    return missing


def names_not_in_package(package: Path, descriptions: dict[str, str]) -> list[str]:
    """`name.py` written in a package's bullet that is no file of that package (at any depth),
    `name/` that is no directory of the whole package (a bullet may point to another layer's
    folder), and bullets of top-level modules that do not exist."""
    ghosts = []
    for key, text in descriptions.items():
        root = package / key
        if not root.exists():
            ghosts.append(key)
            continue
        if not root.is_dir():
            continue
        files = {p.name for p in root.rglob("*.py")}
        directories = {p.name + "/" for p in package.rglob("*") if p.is_dir()}
        ghosts += [f"{key}: {name}" for name in re.findall(r"`(\w+\.py)`", text) if name not in files]
        ghosts += [f"{key}: {name}" for name in re.findall(r"`(\w+/)`", text) if name not in directories]
    return ghosts


def test_development_page_names_every_module_in_its_package():
    """Every module of the package is named on docs/development.md, in the bullet of its package
    (after its subpackage's name), and every module or folder name a bullet writes exists there."""
    descriptions = package_descriptions(DEVELOPMENT.read_text(encoding="utf-8"))
    package = REPO / PACKAGE
    missing = modules_missing_from_descriptions(package, descriptions)
    assert not missing, f"docs/development.md's 'The package' does not name these modules: {missing}"
    ghosts = names_not_in_package(package, descriptions)
    assert not ghosts, f"docs/development.md's 'The package' names what does not exist: {ghosts}"


def test_development_page_paths_exist():
    """Every `path/to/file.py` written in docs/development.md's prose exists in the repository or
    the package (paths outside it, starting with ../, are not checked)."""
    paths = re.findall(r"`([\w./-]+/[\w.-]+\.py)`", _prose(DEVELOPMENT.read_text(encoding="utf-8")))
    assert paths
    ghosts = [p for p in paths
              if not p.startswith("../") and not (REPO / p).is_file() and not (REPO / PACKAGE / p).is_file()]
    assert not ghosts, f"docs/development.md names files that do not exist: {ghosts}"


def test_development_page_tests_tree_is_the_tests_folder():
    """docs/development.md's tests tree names exactly the folders under tests/, every file there
    that is not a test file (conftest.py, helpers.py, the scripts the tests launch) in its folder's
    entry, and no file a folder does not hold."""
    block = next(b for b in _fenced_blocks(DEVELOPMENT.read_text(encoding="utf-8")) if b.startswith("tests/\n"))
    entries = tree_entries(block)
    folders = [p for p in TESTS.rglob("*") if p.is_dir()]
    actual = {"tests"} | {p.relative_to(REPO).as_posix() for p in folders
                          if not any(part.startswith((".", "__")) for part in p.relative_to(TESTS).parts)}
    assert set(entries) == actual, (sorted(actual - set(entries)), sorted(set(entries) - actual))
    support = [p for p in TESTS.rglob("*.py") if not p.name.startswith("test_") and "__pycache__" not in p.parts]
    missing = sorted(p.relative_to(REPO).as_posix() for p in support
                     if not re.search(rf"\b{re.escape(p.name)}\b", entries[p.parent.relative_to(REPO).as_posix()]))
    assert not missing, f"docs/development.md's tests tree does not name these files: {missing}"
    ghosts = [f"{folder}/{name}" for folder, text in entries.items()
              for name in re.findall(r"(?<![\w/.])(\w+\.py)\b", text) if not (REPO / folder / name).is_file()]
    assert not ghosts, f"docs/development.md's tests tree names files that do not exist: {ghosts}"


def test_modules_missing_from_descriptions_checks_each_place(tmp_path):
    for relative in ("errors.py", "data/__init__.py", "data/cirr.py", "data/shoes.py",
                     "data/synthetic/__init__.py", "data/synthetic/shoes.py", "data/synthetic/world.py"):
        (tmp_path / "pkg" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / relative).write_text("")
    descriptions = {"errors.py": "", "data/": "`cirr.py`, `shoes.py`; `synthetic/` (`world.py`)"}
    # data/shoes.py is named before `synthetic/`, data/synthetic/shoes.py nowhere after it
    assert modules_missing_from_descriptions(tmp_path / "pkg", descriptions) == ["pkg/data/synthetic/shoes.py"]
    # named after `synthetic/` it is found; a top-level module without a bullet of its own is not
    assert modules_missing_from_descriptions(tmp_path / "pkg", {"data/": descriptions["data/"] + " `shoes.py`"}) == [
        "pkg/errors.py"]
    descriptions["data/"] += ", `ghost.py`, `nowhere/`, `synthetic/`"
    assert names_not_in_package(tmp_path / "pkg", {**descriptions, "gone.py": ""}) == [
        "data/: ghost.py", "data/: nowhere/", "gone.py"]


def test_package_descriptions_reads_each_bullet_and_its_continuation_lines():
    page = ("# Development\n\n## The package\n\n```\n- **`fake/`**: in a code block\n```\n\n"
            "- **`errors.py`**: one\n  line two\n- **`data/`**: `cirr.py`,\n  `shoes.py`.\n\n"
            "After the list.\n\n## Tests\n\n- **`tests/`**: not the package\n")
    assert package_descriptions(page) == {"errors.py": ": one\n  line two\n",
                                          "data/": ": `cirr.py`,\n  `shoes.py`.\n\n"}


def test_tree_entries_collects_each_folders_lines():
    block = ("tests/\n  conftest.py   fixtures\n                more\n  apps/    commands\n"
             "    demo/  web (demo/conftest.py)\n                 browser\n  scripts/  (a.py, b.py)\n")
    assert tree_entries(block) == {
        "tests": "tests/\nconftest.py   fixtures\nmore",
        "tests/apps": "apps/    commands",
        "tests/apps/demo": "demo/  web (demo/conftest.py)\nbrowser",
        "tests/scripts": "scripts/  (a.py, b.py)",
    }


def test_api_page_lists_the_lazily_imported_names():
    """docs/api.md's list of the names `import clip_cir` imports on first use is `_LAZY`'s keys."""
    import clip_cir

    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    listed = re.search(r"on first use of\s+one of its names \(([^)]*)\)", text)
    assert listed, "docs/api.md no longer says which names are imported on first use"
    names = re.findall(r"`(\w+)`", listed.group(1))
    assert sorted(names) == sorted(clip_cir._LAZY), (sorted(set(clip_cir._LAZY) - set(names)),
                                                     sorted(set(names) - set(clip_cir._LAZY)))


def _documentation_files() -> list[Path]:
    files = [README] + sorted((REPO / "docs").rglob("*.md"))
    files += sorted(p for p in (REPO / PACKAGE).rglob("*")
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
    license_file = REPO / "LICENSE"
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
                offenders.append(f"{path.relative_to(REPO).as_posix()}:{number}: {line.strip()}")
    assert not offenders, ("describe behaviour, not the ticket that asked for it:\n" + "\n".join(offenders))


# --- (d) the README's module tree ---------------------------------------------------------------------


def test_readme_module_tree_names_every_package_directory():
    named = readme_tree()
    missing = sorted(package_directories() - named)
    assert not missing, f"README.md's module tree does not name these package directories: {missing}"


def test_readme_module_tree_names_no_directory_that_does_not_exist():
    named = readme_tree()
    ghosts = sorted(d for d in named if (d == PACKAGE or d.startswith(PACKAGE + "/")) and not (REPO / d).is_dir())
    assert not ghosts, f"README.md's module tree names directories that do not exist: {ghosts}"


# --- (e) links into docs/ -----------------------------------------------------------------------------


def test_readme_links_into_docs_resolve():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)\s#]*)(?:#[^)\s]*)?\)", text)
    assert targets, "README.md links to nothing under docs/"
    broken = sorted({t for t in targets if not (REPO / t).is_file()})
    assert not broken, f"README.md links to missing files: {broken}"


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_docs_relative_links_resolve(page):
    path = REPO / "docs" / page
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)", path.read_text(encoding="utf-8"))
    local = [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    broken = sorted({t for t in local if not (path.parent / t).exists()})
    assert not broken, f"docs/{page} links to missing files: {broken}"


LAYERS = {"errors": 0, "constants": 0, "config": 0, "data": 1, "models": 2, "encoding": 3, "evaluation": 4,
          "training": 5, "params": 6, "api": 7, "apps": 8}
"""The package's layers, bottom to top: a module may import its own layer and those below."""
NOT_BELOW = {"api": {"params"}}
"""Layers a layer may not import although they are below it: the Python API (`clip_cir.api`)
takes typed settings, never the command lines' options (apps, above it, may import it)."""


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
    """apps -> api -> params -> training -> evaluation -> encoding -> models -> data, lazy imports
    included; api does not import params."""
    package = REPO / "clip_cir"
    assert set(LAYERS) == {p.name.removesuffix(".py") for p in package.iterdir()
                           if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"} - {"__init__"}
    upward = []
    for path in sorted(package.rglob("*.py")):
        layer = path.relative_to(package).parts[0].removesuffix(".py")
        if layer == "__init__":
            continue
        for line, target in _clip_cir_imports(ast.parse(path.read_text())):
            if LAYERS[target] > LAYERS[layer] or target in NOT_BELOW.get(layer, ()):
                upward.append(f"{path.relative_to(REPO)}:{line} ({layer} imports {target})")
    assert not upward, upward


LIBRARY = ("data", "models", "encoding", "evaluation", "training")
"""The layers below the programs: they take typed settings (`clip_cir.config`), never a command line."""


def namespace_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Where a module imports argparse, names `Namespace`, or has a parameter called `args` (the
    name a parsed command line goes by): (line, what)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            found.append((node.lineno, "imports argparse"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            found.append((node.lineno, "imports from argparse"))
        elif isinstance(node, (ast.Name, ast.Attribute)) and (getattr(node, "id", None) == "Namespace"
                                                               or getattr(node, "attr", None) == "Namespace"):
            found.append((node.lineno, "names Namespace"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "Namespace" in node.value \
                and len(node.value) < 80:  # string annotations
            found.append((node.lineno, "names Namespace in an annotation"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            params = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            found += [(node.lineno, "takes `args`") for a in params if a.arg == "args"]
    return found


def test_namespace_uses_finds_each_kind():
    source = ("import argparse\nfrom argparse import Namespace\ndef f(args): pass\n"
              "def g(x: 'argparse.Namespace', *args): return argparse.Namespace()\n")
    kinds = sorted({what for _, what in namespace_uses(ast.parse(source))})
    assert kinds == ["imports argparse", "imports from argparse", "names Namespace", "names Namespace in an annotation",
                     "takes `args`"]
    assert namespace_uses(ast.parse("def f(*args, **kwargs): return args\n")) == []


def test_no_library_module_imports_argparse_or_takes_a_namespace():
    package = REPO / PACKAGE
    found = [f"{path.relative_to(REPO)}:{line}: {what}"
             for layer in LIBRARY for path in sorted((package / layer).rglob("*.py"))
             for line, what in namespace_uses(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, found


# --- (f) no import cycles between modules ---------------------------------------------------------------


def module_imports(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, read from the source of every module under
    `root / package`: imports at any depth (inside functions, under `if TYPE_CHECKING:`) count,
    relative ones included. `from pkg import name` is an import of `pkg.name` when that is a module,
    else of `pkg` (its `__init__`); the parent packages Python runs on the way are not counted."""
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*here[:len(here) - node.level + 1], *([node.module] if node.module else [])]) \
                    if node.level else node.module
                if base in modules:
                    targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = targets - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of imports, each a list of modules with the first repeated at the end, found by a
    depth-first walk (one per edge that leads back into the walk's path); [] when there are none."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path, stack = [start], {start}, [iter(sorted(graph[start]))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif step in on_path:
                cycles.append([*path[path.index(step):], step])
            elif step not in done:
                path.append(step)
                on_path.add(step)
                stack.append(iter(sorted(graph.get(step, ()))))
    return cycles


def test_import_cycles_are_found_through_type_checking_and_lazy_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for init in (package / "__init__.py", package / "sub" / "__init__.py"):
        init.write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a, c\nfrom pkg.sub.b import f\n")
    graph = module_imports(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a", "pkg.c", "pkg.sub.b"}
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    (package / "c.py").write_text("")
    assert import_cycles(module_imports(tmp_path, "pkg")) == []


def test_no_two_modules_import_each_other():
    """At module granularity, within each subpackage and across them, lazy and TYPE_CHECKING
    imports included: a type two modules share lives in a module below both."""
    cycles = import_cycles(module_imports(REPO))
    assert not cycles, "modules that import each other:\n" + "\n".join(" -> ".join(c) for c in cycles)


# --- (g) the tests' own layout ----------------------------------------------------------------------------

TESTS = REPO / "tests"


TEST_FOLDERS = (set(LAYERS) - {"errors", "constants", "config"}) | {"layout", "benchmarks"}
"""A folder of tests per layer of the package (`apps/demo/` inside `apps/`), one for this file and
one for the benchmark scripts."""


def all_test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)


def imports_of_test_files(tree: ast.AST) -> list[tuple[int, str]]:
    """Where a module imports a test file, a module named `test_*` (`import test_x`, `from test_x
    import f`, `from tests.training.test_x import f`, `from . import test_x`,
    `importlib.import_module("test_x")`), at any depth: (line, module name)."""
    def is_test(name: str) -> bool:
        return any(part.startswith("test_") for part in name.split("."))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if is_test(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.module and is_test(node.module):
                found.append((node.lineno, node.module))
            elif not node.module or node.level:
                found += [(node.lineno, a.name) for a in node.names if is_test(a.name)]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and is_test(node.args[0].value) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            found.append((node.lineno, node.args[0].value))
    return found


def test_imports_of_test_files_finds_each_kind():
    source = ("import test_a\nimport os, test_b as b\nfrom test_c import f\nfrom tests.training.test_d import g\n"
              "from . import test_e\ndef h():\n    from test_f import x\n"
              "importlib.import_module('test_g')\n__import__('test_h')\n")
    names = [name for _, name in imports_of_test_files(ast.parse(source))]
    assert names == ["test_a", "test_b", "test_c", "tests.training.test_d", "test_e", "test_f", "test_g", "test_h"]
    assert imports_of_test_files(ast.parse("import helpers\nfrom helpers import test_data_root\n"
                                           "import pytest\ndef test_x(): pass\n")) == []


def test_no_test_file_imports_another():
    """What several test files use lives in tests/helpers.py (functions, classes, constants) or
    tests/conftest.py (fixtures), never in a test file another one imports."""
    assert len(all_test_files()) > 40  # the walk finds the tests (a broken walk would pass vacuously)
    files = sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)  # helpers and conftest too
    found = [f"{path.relative_to(REPO)}:{line}: imports {name}"
             for path in files for line, name in imports_of_test_files(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, "import shared helpers from tests/helpers.py instead:\n" + "\n".join(found)


def test_tests_are_laid_out_like_the_package_with_unique_file_names():
    """Every test file sits in a folder (one per layer of the package, and a few for the rest),
    none at the top of tests/; pytest imports them by file name (no __init__.py files), so two
    with one name would clash."""
    files = all_test_files()
    loose = [p.name for p in files if p.parent == TESTS]
    assert not loose, f"test files directly under tests/ (put each in the folder of the layer it tests): {loose}"
    assert {p.relative_to(TESTS).parts[0] for p in files} == TEST_FOLDERS
    names = [p.name for p in files]
    clashes = sorted({n for n in names if names.count(n) > 1})
    assert not clashes, f"test files that share a name: {clashes}"
    assert not list(TESTS.rglob("__init__.py")), "tests/ has no packages: its modules are imported by file name"
