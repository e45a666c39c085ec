"""The shape of the code: import boundaries, no import cycles, README schemas equal to the code,
no benchmark that shadows a package, no machine path in the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curation import manifests

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "training", "mfhq", "mfhq_contract")


def _modules(package: str) -> dict[str, Path]:
    root = REPO / package
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


ALL_MODULES = {name: path for package in PACKAGES for name, path in _modules(package).items()}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Project modules a file imports (every import, or only those run at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in ALL_MODULES}


@pytest.mark.parametrize("importer, forbidden", [("curation", "training"),
                                                 ("training", "curation"),
                                                 ("mfhq_contract", "curation"),
                                                 ("mfhq_contract", "training")])
def test_one_half_never_imports_the_other(importer, forbidden):
    offenders = [f"{name} imports {target}" for name, path in _modules(importer).items()
                 for target in _imports(path, top_level_only=False)
                 if target == forbidden or target.startswith(forbidden + ".")]
    assert not offenders, offenders


def test_no_import_cycles_among_project_modules():
    graph = {name: {t for t in _imports(path, top_level_only=True) if t != name}
             for name, path in ALL_MODULES.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own submodules is not a cycle of concern.
    real = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not real, real


def test_no_benchmark_file_is_named_like_a_package():
    stems = {p.stem for p in (REPO / "bench").glob("*.py")}
    assert not stems & set(PACKAGES), stems & set(PACKAGES)


def test_no_machine_path_or_missing_file_is_named_in_the_tree():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    pattern = re.compile(r"(?<![\w.])/work/|datasets\.md|DESIGN\.md")    # not OUTPUT/work/
    hits = [f"{name}:{n}" for name in tracked if name.endswith((".py", ".md", ".yaml", ".toml"))
            and name != "tests/test_layout.py"
            for n, line in enumerate((REPO / name).read_text(encoding="utf-8").splitlines(), 1)
            if pattern.search(line)]
    assert not hits, hits


def _readme_columns(section: str) -> dict[str, str]:
    """{column: type text} of the README's table under the heading that starts with `section`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"### `{section}`")
    table = text[start:].split("\n\n")[1]
    columns = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        kind = cells[1].replace("\\", "")
        parts = [k.strip() for k in kind.split(",")]
        # "a, b | int64, double" gives each its own type; "a, b | double" one for all.
        per_column = parts if len(names) > 1 and len(parts) == len(names) else [kind] * len(names)
        columns.update(zip(names, per_column, strict=True))
    return columns


_TYPE_WORDS = {"string": "string", "int64": "int64", "double": "double", "bool": "bool"}


@pytest.mark.parametrize("table", ["clips", "faces", "identities", "shards.parquet"])
def test_readme_schema_tables_equal_the_declared_schemas(table):
    schema = manifests.SCHEMAS[table.removesuffix(".parquet")]
    documented = _readme_columns(table)
    assert list(documented) == schema.names, "README columns differ from curation/manifests.py"
    for field in schema:
        text = documented[field.name]
        if str(field.type).startswith("list<"):
            assert text.startswith("list<"), (field.name, text)
        else:
            assert text.split(",")[0].strip() == _TYPE_WORDS[str(field.type)], (field.name, text)
        assert ("required" in text) == (not field.nullable), (field.name, text)


def test_the_mfhq_command_lists_every_subcommand_and_each_has_help():
    from mfhq.cli import COMMANDS

    out = subprocess.run([sys.executable, "-m", "mfhq", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert f"  {name} " in out


@pytest.mark.parametrize("name", sorted(__import__("mfhq.cli").cli.COMMANDS))
def test_each_mfhq_subcommand_names_itself_in_its_help(name, capsys):
    from mfhq.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mfhq {name}"), out[:80]
