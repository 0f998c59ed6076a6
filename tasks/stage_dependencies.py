"""Which project modules a stage's code imports, and whether its dvc.yaml deps cover them.

DVC re-runs a stage only when something listed in its `deps` changes, so a module the stage imports but
does not list can change while the stage stays "up to date". These functions read the code with `ast`
(nothing is imported: no torch, no MLflow) and follow every `import x` / `from x import y` of a module
under flows/ or tasks/, at module level or inside a function, starting from `flows/<stage>.py`.

A package's `__init__.py` runs whenever one of its modules is imported, so it counts too, unless it holds
only a docstring: then it runs nothing that could change a stage's result. Once it holds code, it counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path, PurePosixPath

import yaml

PROJECT_PACKAGES = ("flows", "tasks")
FLOWS_DIR = "flows"
DVC_FILE = "dvc.yaml"


def flow_file(stage: str) -> PurePosixPath:
    """The flow module that `medlora stage NAME` runs, relative to the project root."""
    return PurePosixPath(FLOWS_DIR) / f"{stage}.py"


def module_name(path: PurePosixPath) -> str:
    """`tasks/route/stage.py` -> `tasks.route.stage`; `tasks/route/__init__.py` -> `tasks.route`."""
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str, root: Path) -> PurePosixPath | None:
    """The project file of a dotted module name (module or package), or None for anything else
    (third-party, standard library, or a name imported from a module rather than a module)."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    for candidate in (PurePosixPath(*parts).with_suffix(".py"), PurePosixPath(*parts, "__init__.py")):
        if (root / candidate).is_file():
            return candidate
    return None


@lru_cache(maxsize=1024)  # keyed on the source text, so an edited file is read afresh
def imported_names(source: str, module: str, is_package: bool = False) -> frozenset[str]:
    """Every dotted name an import statement in `source` may load, anywhere in the file.

    `from a.b import c` yields both `a.b` and `a.b.c`: `c` is a submodule or a name defined in `a.b`,
    and only the files on disk can tell (see `module_file`). Relative imports are resolved against
    `module`, the dotted name of the file being read (a package when `is_package`).
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            if base:
                names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names if alias.name != "*")
    return frozenset(names)


@lru_cache(maxsize=1024)
def runs_code(source: str) -> bool:
    """False when a module holds nothing but a docstring and `from __future__` imports."""
    for statement in ast.parse(source).body:
        docstring = (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
                     and isinstance(statement.value.value, str))
        future = isinstance(statement, ast.ImportFrom) and statement.module == "__future__"
        if not (docstring or future):
            return True
    return False


def loaded_files(name: str, root: Path) -> list[PurePosixPath]:
    """The project files that importing `name` executes: the module itself and each enclosing
    package's `__init__.py` that runs code (`import a.b.c` runs a, a.b and a.b.c)."""
    parts = name.split(".")
    paths = [module_file(".".join(parts[:depth]), root) for depth in range(1, len(parts) + 1)]
    return [path for path in paths
            if path is not None and (path.name != "__init__.py" or runs_code((root / path).read_text()))]


def imported_modules(start: PurePosixPath, root: Path) -> list[PurePosixPath]:
    """`start` and every project module it imports, directly or through other project modules, sorted."""
    seen: set[PurePosixPath] = set()
    pending = [start]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        source = (root / path).read_text()
        for name in imported_names(source, module_name(path), is_package=path.name == "__init__.py"):
            pending.extend(f for f in loaded_files(name, root) if f not in seen)
    return sorted(seen)


def stage_modules(stage: str, root: Path) -> list[PurePosixPath]:
    """Every project module `medlora stage NAME` runs for this stage, starting from its flow file."""
    start = flow_file(stage)
    if not (root / start).is_file():
        raise FileNotFoundError(f"{root / start}: stage {stage!r} has no flow module (expected flows/{stage}.py)")
    return imported_modules(start, root)


def covers(deps: Iterable[str], path: PurePosixPath) -> bool:
    """Whether one of the dvc.yaml `deps` (a file, or a directory holding it) is `path` or contains it."""
    for dep in deps:
        dep_path = PurePosixPath(dep.strip().rstrip("/"))
        if dep_path == path or dep_path in path.parents:
            return True
    return False


def uncovered_modules(stage: str, deps: Iterable[str], root: Path) -> list[PurePosixPath]:
    """The modules the stage's code imports that none of `deps` covers (empty when the deps are complete)."""
    deps = list(deps)
    return [path for path in stage_modules(stage, root) if not covers(deps, path)]


def dvc_stage_deps(root: Path) -> dict[str, list[str]]:
    """Each stage of dvc.yaml with its `deps` as written (templated entries such as `${input.path}` kept as is)."""
    stages = yaml.safe_load((root / DVC_FILE).read_text()).get("stages") or {}
    return {name: [str(dep) for dep in (stage.get("deps") or [])] for name, stage in stages.items()}


def package_modules(package: PurePosixPath, root: Path) -> set[PurePosixPath]:
    """The modules of one package directory that can matter to a stage (docstring-only `__init__.py` left out)."""
    return {package / path.name for path in (root / package).glob("*.py")
            if path.name != "__init__.py" or runs_code(path.read_text())}


def suggested_deps(stage: str, root: Path) -> list[str]:
    """The code deps to write in dvc.yaml for a stage: a package directory where the stage imports every module
    of it, single files otherwise. Data deps (inputs, other stages' outs) are not code and are not included."""
    modules = stage_modules(stage, root)
    by_package: dict[PurePosixPath, set[PurePosixPath]] = {}
    for path in modules:
        by_package.setdefault(path.parent, set()).add(path)
    deps = []
    for package, used in sorted(by_package.items()):
        whole = package.parent != PurePosixPath(".") and used == package_modules(package, root)
        deps.extend([package.as_posix()] if whole else sorted(p.as_posix() for p in used))
    return deps


def pipeline_stage_names(root: Path, pipeline: str = "flows/pipeline.py") -> list[str]:
    """`STAGES` in flows/pipeline.py, in pipeline order, read without importing Prefect."""
    for node in ast.walk(ast.parse((root / pipeline).read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "STAGES" for t in targets) and isinstance(node.value, ast.Tuple):
            return [item.value for item in node.value.elts if isinstance(item, ast.Constant)]
    raise ValueError(f"{root / pipeline}: no `STAGES = (...)` tuple found; the stage list is read from it")
