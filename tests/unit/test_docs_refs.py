"""Docs name only code that exists: every ``haihe/…`` file path and every dotted ``haihe.<module>…`` reference in
README.md and docs/ resolves to a file, and its first attribute (``haihe.schedulers.walltime.overdue``) to a
top-level name of that module. Dotted names whose second part is no module (MLflow tags like ``haihe.org``) are
tags, not code, and are left alone."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"\b((?:haihe|tests|bench|scripts)/[\w/\-]+\.py)\b")
DOTTED = re.compile(r"\b(haihe(?:\.[A-Za-z_]\w*)+)")


@cache
def top_level_names(path: Path) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").is_file() else None


def unresolved(text: str) -> list[str]:
    missing = [p for p in PATH.findall(text) if not (ROOT / p).is_file()]
    for dotted in DOTTED.findall(text):
        parts = dotted.split(".")
        if module_file(parts[:2]) is None:
            continue  # haihe.org, haihe.job_id: tag names
        for k in range(len(parts), 1, -1):
            found = module_file(parts[:k])
            if found is not None:
                if k < len(parts) and parts[k] not in top_level_names(found):
                    missing.append(dotted)
                break
    return missing


def test_every_file_and_module_a_doc_names_exists() -> None:
    bad = {doc.name: sorted(set(m)) for doc in DOCS if (m := unresolved(doc.read_text()))}
    assert not bad, f"docs name code that does not exist: {bad}"


def test_the_check_catches_a_stale_reference() -> None:
    assert unresolved("see haihe/schedulers/ray/watchdog.py and haihe.schedulers.walltime.stop_overdue") == [
        "haihe/schedulers/ray/watchdog.py", "haihe.schedulers.walltime.stop_overdue"]
    assert unresolved("haihe.schedulers.walltime.overdue, tag haihe.org, haihe/platform/jobs/reconciler.py") == []
