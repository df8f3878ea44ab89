"""The shape of the house: tasks/ imports no Airflow, has no import circles (lazy imports count), nothing
outside the demo package imports it, and every step of the registry is a module with run and main."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from tasks.pipeline import ALL_STEPS, STEPS
from tests.conftest import REPO

TASKS = REPO / "tasks"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(path): path for path in sorted(TASKS.rglob("*.py")) if path.name != "__main__.py"}


def imported_modules(path: Path) -> set[str]:
    """Every tasks module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name in MODULES}


def test_importing_every_tasks_module_imports_no_airflow():
    script = ("import importlib, sys\n"
              f"for name in {sorted(MODULES)!r}:\n"
              "    importlib.import_module(name)\n"
              "loaded = sorted(name for name in sys.modules if name == 'airflow' or name.startswith('airflow.'))\n"
              "print(loaded[:5])\n"
              "raise SystemExit(1 if loaded else 0)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, f"tasks imports Airflow: {result.stdout}{result.stderr[-2000:]}"


def test_no_import_circles_among_tasks_modules():
    edges = {name: imported_modules(path) - {name} for name, path in MODULES.items()}
    # A package imports its own submodules; a submodule importing its package's registry back would circle.
    circles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for neighbour in sorted(edges[node]):
            if state.get(neighbour) == 1:
                circles.append([*path[path.index(neighbour):], neighbour])
            elif not state.get(neighbour):
                visit(neighbour, path)
        path.pop()
        state[node] = 2

    for name in sorted(edges):
        if not state.get(name):
            visit(name, [])
    assert circles == [], "import circles: " + "; ".join(" -> ".join(circle) for circle in circles)


def test_nothing_outside_the_demo_package_imports_it():
    importers = {name: sorted(target for target in imported_modules(path) if target.startswith("tasks.demo"))
                 for name, path in MODULES.items() if not name.startswith("tasks.demo")}
    # bench/ may: the benchmarks measure on the demo corpus, the anchors' data.
    for folder in ("plugins", "dags"):
        for path in (REPO / folder).rglob("*.py"):
            names = {node.module for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.ImportFrom) and node.module}
            importers[str(path.relative_to(REPO))] = sorted(n for n in names if n.startswith("tasks.demo"))
    assert {name: targets for name, targets in importers.items() if targets} == {}


def test_tests_reach_the_demo_only_to_test_it_or_to_crawl_its_site():
    # A test that needs labelled texts builds them with tests/corpus_support.py; the demo's site (and the
    # corpus file it serves) is the one demo part other tests may use, as a real site to crawl.
    crawl_target = {"tasks.demo.site", "tasks.demo.corpus.write_corpus"}
    demo_tests = {"test_demo_corpus.py", "test_demo_runner.py", "test_demo_site.py", "test_learning_curve.py",
                  "test_pipeline_e2e.py", "test_demo_labelling.py"}
    reached = {}
    for path in sorted((REPO / "tests").glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks.demo"):
                names |= {node.module if node.module == "tasks.demo.site" else f"{node.module}.{alias.name}"
                          for alias in node.names}
        if path.name not in demo_tests and names - crawl_target:
            reached[path.name] = sorted(names - crawl_target)
    assert reached == {}


def test_every_registered_step_is_a_module_with_run_and_main():
    for step in STEPS:
        module = importlib.import_module(step.module)
        assert callable(module.run) and callable(module.main), step.name
        assert getattr(module, "STEP", step.name) == step.name
        assert set(step.inputs) <= {other.name for other in STEPS}, step.name


def test_the_readme_layout_table_names_every_tasks_module():
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `tasks/")]
    cells = {row.split("|")[1].strip(): row for row in rows}
    steps_row = cells["`tasks/<step>.py`"]
    unnamed = []
    for path in sorted((REPO / "tasks").rglob("*.py")):
        if path.stem in ("__init__", "__main__"):
            continue
        relative = path.relative_to(REPO)
        if len(relative.parts) == 2:  # tasks/<module>.py: a step in the steps row, or its own row
            named = f"`{path.stem}`" in steps_row or any(f"`{relative}`" in cell for cell in cells)
        else:
            package_row = cells.get(f"`{relative.parent}/`", "")
            named = f"`{path.stem}`" in package_row or f"`{path.name}`" in package_row
        if not named:
            unnamed.append(str(relative))
    assert unnamed == [], "README.md's layout table does not name these modules"


def test_no_shared_module_imports_a_step():
    """A step module (the registry's, production steps included) is a top: shared modules (everything else in
    tasks but the command line, the registry and the demo) never import one, at the top or lazily. What two steps
    share lives in a shared module (a step's facts read by shared code, too: `tasks.records.CleanFacts`)."""
    steps = {step.module for step in ALL_STEPS}
    orchestrators = {"tasks.cli", "tasks.pipeline"}  # they run the steps: importing them is their job
    shared = {name: path for name, path in MODULES.items()
              if name not in steps | orchestrators and not name.startswith("tasks.demo")}
    importers = {name: sorted(imported_modules(path) & steps) for name, path in shared.items()}
    assert {name: targets for name, targets in importers.items() if targets} == {}


def lazy_imports_without_a_reason() -> list[str]:
    """Every import of one of our modules inside a function, in tasks/ and plugins/, whose line or the comment and
    import lines right above it carry no `# lazy:` reason."""
    unexplained: set[str] = set()
    for path in sorted([*TASKS.rglob("*.py"), *(REPO / "plugins").rglob("*.py")]):
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
                if not any(name.split(".")[0] in ("tasks", "freshet_airflow") for name in names):
                    continue
                number = node.lineno - 1
                block = [lines[number]]
                while number > 0 and lines[number - 1].strip().startswith(("#", "from ", "import ")):
                    number -= 1
                    block.append(lines[number])
                if not any("# lazy:" in line for line in block):
                    unexplained.add(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return sorted(unexplained)


def test_a_lazy_import_of_our_modules_says_what_it_saves():
    """An import inside a function stays only where it saves a measured cost (torch in the DAG parse, the model
    stack in a command that does not need it) and says so in a `# lazy:` comment; the rest sit at the top."""
    assert lazy_imports_without_a_reason() == []
