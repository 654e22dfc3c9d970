"""The package layout: no stdlib shadowing, docstrings on every subpackage, imports pointing downward."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("platform", "jobs", "schedulers", "model_zoo", "datasets", "portal", "cluster")
# package -> packages it must never import
FORBIDDEN = {
    "schedulers": ("platform", "portal", "server", "jobs", "datasets", "model_zoo"),
    "datasets": ("platform", "portal", "server", "jobs", "schedulers", "model_zoo"),
    "model_zoo": ("platform", "portal", "server", "jobs", "schedulers", "datasets"),
    "cluster": ("platform", "portal", "server", "jobs"),
    "jobs": ("platform", "portal", "server"),
    "platform": ("portal", "server"),
}


def test_stdlib_platform_not_shadowed_from_repo_root() -> None:
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "Linux"


def test_every_subpackage_says_its_job() -> None:
    for name in SUBPACKAGES:
        mod = importlib.import_module(f"haihe.{name}")
        assert mod.__doc__ and len(mod.__doc__.strip()) > 40, name


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "haihe":
                found.update(f"haihe.{a.name}" for a in node.names)
    return found


def test_imports_point_downward() -> None:
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        for path in (ROOT / "haihe" / pkg).rglob("*.py"):
            for name in _imports(path):
                for f in forbidden:
                    if name == f"haihe.{f}" or name.startswith(f"haihe.{f}."):
                        bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_jobs_runtime_and_cli_do_not_import_fastapi() -> None:
    code = "import sys, haihe.cli, haihe.client; print('fastapi' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def _literals(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """Every tuple, list or set literal of strings, and every ``Literal[...]``, with its line."""
    found = []
    for node in ast.walk(tree):
        elts = None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elts = node.elts
        elif isinstance(node, ast.Dict):
            elts = [k for k in node.keys if k is not None]
        if elts and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts):
            found.append((node.lineno, [e.value for e in elts]))  # type: ignore[attr-defined]
    return found


def test_each_name_rule_and_shared_list_has_one_definition() -> None:
    """haihe/names.py holds every name rule, the recipe and launcher lists and the serving-address marker; no other
    module writes them again (the recipe registry maps each recipe to its module and must cover exactly these)."""
    from haihe import names
    from haihe.jobs import recipes
    from haihe.schedulers.base import Launcher

    rules = {names.ACCOUNT_NAME, names.RESOURCE_NAME, names.ALIAS, names.TASK_NAME, names.SERVING_ADDRESS_MARKER}
    lists = {"recipes": set(names.RECIPES), "launchers": set(names.LAUNCHERS)}
    allowed = {("haihe/jobs/recipes/__init__.py", "recipes")}
    bad = []
    for path in (ROOT / "haihe").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel == "haihe/names.py":
            continue
        tree = ast.parse(path.read_text())
        prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}  # docstrings may mention them
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose and \
                    any(rule in node.value for rule in rules):
                bad.append(f"{rel}:{node.lineno} repeats a rule of haihe/names.py: {node.value!r}")
        for line, values in _literals(tree):
            for what, members in lists.items():
                if len(members & set(values)) >= 2 and (rel, what) not in allowed:
                    bad.append(f"{rel}:{line} lists {what} again: {values}")
    assert not bad, "\n".join(bad)
    assert set(recipes.RECIPES) == set(names.RECIPES)
    assert {m.value for m in Launcher} == set(names.LAUNCHERS)


def test_the_one_definition_check_sees_a_copy(tmp_path: Path) -> None:
    tree = ast.parse('LAUNCHERS = ("none", "torchrun", "mpi")\nx: Literal["digits-cnn", "finetune"]\n')
    assert [v for _, v in _literals(tree)] == [["none", "torchrun", "mpi"], ["digits-cnn", "finetune"]]
