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
