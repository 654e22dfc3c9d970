"""The package layout: no stdlib shadowing, docstrings on every subpackage, imports pointing downward."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AREAS = ("identity", "jobs", "quotas", "datasets", "zoo", "endpoints", "tracking", "gateway")
SUBPACKAGES = ("platform", "jobs", "schedulers", "model_zoo", "datasets", "portal", "cluster", "cli", "client",
               *(f"platform.{area}" for area in AREAS))
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


def _module_graph() -> dict[str, set[str]]:
    """haihe's modules and the haihe modules each imports, wherever the import stands (a function body, a
    ``TYPE_CHECKING`` block: a cycle hidden inside a function is still a cycle). A module importing its own parent
    package is not counted (Python loads the parent first anyway)."""
    files = {}
    for path in (ROOT / "haihe").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            for name in names:
                target = owner(name) if name.startswith("haihe") else None
                if target and target != mod and not mod.startswith(target + "."):
                    edges.add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_between_modules() -> None:
    """No two modules import each other, directly or round a loop, not even from inside a function: a module can
    be read (and loaded) after the ones it uses. (Was: cli.py <-> cli_*.py, client.py <-> client_zoo.py, and
    context -> dispatcher -> jobs -> context, jobs <-> zoo.)"""
    assert _cycles(_module_graph()) == []


def test_the_cycle_check_sees_a_loop_through_a_function_body() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = _module_graph()
    assert "haihe.cli.common" in graph["haihe.cli.jobs"]  # a real edge is seen
    assert "haihe.platform.jobs.dispatcher" in graph["haihe.platform.jobs.service"]


def test_jobs_runtime_and_cli_do_not_import_fastapi() -> None:
    code = ("import sys, haihe.cli, haihe.client; "
            "print('fastapi' in sys.modules, 'ray' in sys.modules, 'sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]  # the SDK's models come from schemas that need neither


def test_a_jobs_runtime_loads_neither_torch_nor_the_zoo_registry_to_run_a_command(tmp_path: Path) -> None:
    """Every rank of every job starts this runtime: torch alone cost 2-4 s of CPU there, before the user's command;
    MLflow's client 3 s more on rank 0 of a tracked job; the dataset stager's models 0.2 s on a job with no data."""
    code = ("import sys, haihe.jobs.runtime.main as m; from haihe.jobs.runtime.distributed import detect; "
            "from haihe.jobs.runtime.contract import RuntimeEnv; "
            f"m._stage(RuntimeEnv(cache_dir={str(tmp_path)!r}), detect({{}})); "
            "print(*(name in sys.modules for name in ('torch', 'mlflow', 'haihe.model_zoo.registry', "
            "'haihe.datasets.stage', 'pydantic')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"] * 5


def test_the_zoo_package_exports_what_it_loads_lazily() -> None:
    import haihe.model_zoo as zoo

    assert sorted(zoo.__all__) == sorted(zoo._WHERE)
    for name in zoo.__all__:
        assert getattr(zoo, name) is getattr(importlib.import_module(f"haihe.model_zoo.{zoo._WHERE[name]}"), name)


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


def test_the_gateway_takes_its_cluster_from_settings_not_the_dev_port_plan() -> None:
    """Production code reads where Ray's GCS and Serve listen from the scheduler URL or ``Settings.gateway``; only
    ``haihe up``'s bring-up (haihe.cluster) knows the development port plan."""
    bad = [f"{p.relative_to(ROOT)} imports {name}" for p in (ROOT / "haihe" / "platform" / "gateway").rglob("*.py")
           for name in _imports(p) if name.startswith("haihe.cluster")]
    assert not bad, "\n".join(bad)
