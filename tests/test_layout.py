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
PACKAGES = ("curation", "training", "mfhq", "mfhq_contract", "mfhq_faces")


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


def _all_imports(path: Path) -> set[str]:
    """Every module a file imports, deferred ones (inside functions, under TYPE_CHECKING)
    included: a wall or a cycle that only shows at call time is still a wall or a cycle."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _imports(path: Path) -> set[str]:
    """The project modules a file imports (every import, deferred ones included)."""
    return {n for n in _all_imports(path) if n in ALL_MODULES}


def _imports_package(names: set[str], package: str) -> bool:
    return any(n == package or n.startswith(package + ".") for n in names)


@pytest.mark.parametrize("importer, forbidden", [
    ("curation", "training"), ("training", "curation"),
    # the ground floor: the shard contract and the face toolkit stand on nothing of ours
    ("mfhq_contract", "curation"), ("mfhq_contract", "training"), ("mfhq_contract", "mfhq_faces"),
    ("mfhq_faces", "curation"), ("mfhq_faces", "training"), ("mfhq_faces", "ray"),
    ("mfhq_faces", "torch"),
    # the stages are plain Python: Ray and the executor that runs them sit above them
    ("curation.pipeline", "ray"), ("curation.pipeline", "curation.executor"),
    ("curation.pipeline", "curation.audit"),
])
def test_each_layer_imports_only_what_lies_below_it(importer, forbidden):
    root = importer.replace(".", "/")
    files = {name: path for name, path in ALL_MODULES.items()
             if name == importer or name.startswith(importer + ".")}
    assert files, f"no modules under {root}"
    offenders = [f"{name} imports {forbidden}" for name, path in files.items()
                 if _imports_package(_all_imports(path), forbidden)]
    assert not offenders, offenders


def test_the_build_and_the_eval_measure_faces_with_one_toolkit():
    """No second FaceMesh wrapper, pose solver, alignment or ArcFace loader outside
    mfhq_faces: every face measurement of both halves goes through it."""
    own = re.compile(r"FaceMesh\(|solvePnP\(|def similarity_transform|def five_points"
                     r"|def head_pose|def iou\b|InferenceSession\(")
    hits = [f"{name}:{n}" for name, path in ALL_MODULES.items()
            if not name.startswith("mfhq_faces")
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if own.search(line)]
    assert not hits, hits


def test_no_import_cycles_among_project_modules():
    graph = {name: {t for t in _imports(path) if t != name}
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
