"""The new-job form in sbatch words ↔ a JobSpec dict, and service errors ↔ the form field they belong next to."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from haihe.errors import HaiheError, QuotaExceeded
from haihe.jobs.spec import parse_time_limit
from haihe.names import RECIPES

SOURCES = (*RECIPES, "own")
INT_FIELDS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task")
DEFAULTS: dict[str, str] = {"name": "", "source": "digits-cnn", "entrypoint": "", "code_uri": "", "scheduler": "",
                            "partition": "", "qos": "", "nodes": "1", "gpus_per_node": "0", "tasks_per_node": "1",
                            "cpus_per_task": "1", "mem_gb": "", "time_limit": "00:30:00", "launcher": "none",
                            "dataset": "", "model": "", "register": "", "target": "", "packages": "", "image": ""}
# spec paths (as the services name them) -> the form field the message is shown next to
_PREFIX_TO_FIELD = (("resources.time_limit", "time_limit"), ("resources.", None), ("dataset", "dataset"),
                    ("model", "model"), ("register", "register"), ("registration", "register"), ("recipe", "source"),
                    ("entrypoint", "entrypoint"),
                    ("workdir", "entrypoint"), ("code_uri", "entrypoint"), ("launcher", "launcher"),
                    ("scheduler", "scheduler"), ("name", "name"), ("project", "target"), ("org", "target"),
                    ("partition", "partition"), ("qos", "qos"), ("arrays", "_form"), ("gpus", "gpus_per_node"),
                    ("multi_node", "nodes"), ("environment.image", "image"), ("environment", "packages"))


@dataclass
class FormErrors:
    """Messages per form field; ``_form`` collects those that belong to no single field."""

    by_field: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, message: str) -> None:
        self.by_field.setdefault(name, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.by_field)

    def get(self, name: str) -> list[str]:
        return self.by_field.get(name, [])


def form_field(path: str | None) -> str:
    """The form field a service error's ``field`` belongs to (``resources.nodes`` → ``nodes``)."""
    if not path:
        return "_form"
    if path == "resources":
        return "resources"
    for prefix, target in _PREFIX_TO_FIELD:
        if path.startswith(prefix):
            return target or path.removeprefix(prefix).split(".")[0]
    return "_form"


# a field's name rule, in words (a pattern mismatch is otherwise pydantic's regex)
_RULES = {"name": "form.err.rule.account", "partition": "form.err.rule.account", "qos": "form.err.rule.account",
          "scheduler": "form.err.rule.account", "target": "form.err.rule.account",
          "dataset": "form.err.rule.resource", "register": "form.err.rule.resource", "model": "form.err.rule.zoo_ref"}


def problem_text(problem: Mapping[str, Any], t: Callable[..., str] | None) -> str:
    """One validation problem in the reader's language: pydantic's error code and limits mapped to the catalogue
    (``form.err.type.<code>``; a pattern mismatch says the field's name rule); our own messages stay as they are."""
    message = str(problem.get("message", ""))
    if t is None:
        return message
    kind = str(problem.get("type", ""))
    raw_ctx = problem.get("ctx")
    ctx: dict[str, Any] = dict(raw_ctx) if isinstance(raw_ctx, dict) else {}
    if kind == "string_pattern_mismatch":
        rule = _RULES.get(form_field(str(problem.get("field", ""))))
        return t(rule) if rule else t("form.err.type.string_pattern_mismatch")
    key = f"form.err.type.{kind}"
    if kind and getattr(t, "has", lambda _k: False)(key):
        return t(key, **ctx)
    return message


def errors_from(exc: HaiheError, t: Callable[..., str] | None = None, *, with_path: bool = False) -> FormErrors:
    """Every problem of a refused spec at its form field (all at once), in the reader's language when ``t``;
    ``with_path`` keeps the spec path in front (the YAML editor shows every message in one place)."""
    errors = FormErrors()
    problems = exc.details.get("problems") if isinstance(exc.details.get("problems"), list) else None
    if problems:
        for p in problems:
            path = str(p.get("field", ""))
            text = problem_text(p, t)
            errors.add(form_field(path), text if t is not None and not with_path else f"{path}: {text}")
    else:
        target = form_field(exc.field)
        if isinstance(exc, QuotaExceeded) and exc.details.get("quota") == "max_gpus":
            target = "gpus_per_node"
        errors.add(target, exc.message)
    return errors


def spec_from_form(form: Mapping[str, str], errors: FormErrors, t: Callable[..., str]) -> dict[str, Any]:
    """Build the spec a researcher would have written in YAML; type errors are reported at their field."""
    values = {k: str(form.get(k, v)).strip() for k, v in DEFAULTS.items()}
    resources: dict[str, Any] = {}
    for name in INT_FIELDS:
        raw = values[name]
        if not raw.isdigit():
            errors.add(name, t("form.err.whole_number"))
            continue
        resources[name] = int(raw)
    if values["mem_gb"]:
        try:
            resources["mem_gb"] = float(values["mem_gb"])
        except ValueError:
            errors.add("mem_gb", t("form.err.number"))
    resources["time_limit"] = values["time_limit"] or "60"
    for name in ("partition", "qos"):
        if values[name]:
            resources[name] = values[name]
    spec: dict[str, Any] = {"name": values["name"], "resources": resources, "launcher": values["launcher"]}
    source = values["source"]
    if source == "own":
        if values["entrypoint"]:
            spec["entrypoint"] = values["entrypoint"]
    elif source in RECIPES:
        spec["recipe"] = source
        if source == "batch-infer":
            spec["kind"] = "batch_infer"
    else:
        errors.add("source", t("form.err.source"))
    if values["scheduler"]:
        spec["scheduler"] = values["scheduler"]
    if values["dataset"]:
        name, _, version = values["dataset"].partition("@")
        ref: dict[str, Any] = {"name": name}
        if version:
            ref["version"] = int(version.lstrip("v")) if version.lstrip("v").isdigit() else version
        spec["dataset"] = ref
    if values["model"]:
        spec["model"] = {"from_zoo": values["model"]}
    if values["register"]:
        spec["register"] = {"name": values["register"]}
    packages = [p.strip() for line in values["packages"].splitlines() for p in line.split(",") if p.strip()]
    if packages and values["image"]:
        errors.add("image", t("form.err.packages_or_image"))
    elif packages:
        spec["environment"] = {"pip": packages}
    elif values["image"]:
        spec["environment"] = {"image": values["image"]}
    return spec


def form_from_spec(spec: Mapping[str, Any]) -> dict[str, str]:
    """Prefill the form from a stored spec (copy a job, fine-tune from the zoo)."""
    out = dict(DEFAULTS)
    res = spec.get("resources") or {}
    out["name"] = str(spec.get("name", ""))
    out["source"] = str(spec.get("recipe") or ("own" if spec.get("entrypoint") else "digits-cnn"))
    entry = spec.get("entrypoint")
    if isinstance(entry, list):
        import shlex

        out["entrypoint"] = shlex.join(str(a) for a in entry)
    for name in (*INT_FIELDS, "partition", "qos", "mem_gb"):
        if res.get(name) is not None:
            out[name] = str(res[name])
    if res.get("time_limit") is not None:
        out["time_limit"] = minutes_to_walltime(int(parse_time_limit(res["time_limit"])))
    out["launcher"] = str(spec.get("launcher", "none"))
    out["scheduler"] = str(spec.get("scheduler") or "")
    ds = spec.get("dataset") or {}
    if ds:
        out["dataset"] = f"{ds.get('name')}@{ds.get('version', 'latest')}"
    out["model"] = str((spec.get("model") or {}).get("from_zoo", ""))
    out["register"] = str((spec.get("register") or {}).get("name", ""))
    environment = spec.get("environment") or {}
    out["packages"] = "\n".join(str(p) for p in environment.get("pip") or [])
    out["image"] = str(environment.get("image") or "")
    return out


def minutes_to_walltime(minutes: int) -> str:
    d, rem = divmod(minutes, 1440)
    h, m = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def walltime_minutes(value: str) -> int | None:
    try:
        return parse_time_limit(value.strip() if not value.strip().isdigit() else int(value.strip()))
    except ValueError:
        return None
