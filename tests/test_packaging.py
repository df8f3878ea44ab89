"""The package installs: the wheel holds every module and file of `tasks` and `freshet_airflow`, and installed
into a fresh venv on top of the lock, its commands run from outside the checkout.

The fresh venv has no pip and no packages of its own: a `.pth` file puts the project venv's site-packages
(the lock) on its path. A path added that way is not scanned for `.pth` files, so the editable install's
hook, which maps `tasks` to this checkout, stays inactive: `tasks` can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

# Where each package's source lives in the checkout (pyproject.toml's package-dir).
PACKAGE_ROOTS = {"tasks": REPO / "tasks", "freshet_airflow": REPO / "plugins" / "freshet_airflow"}


def source_files(package: str) -> set[str]:
    """Every file of `package` in the checkout, as its path inside the wheel (caches left out)."""
    root = PACKAGE_ROOTS[package]
    return {f"{package}/{path.relative_to(root).as_posix()}" for path in root.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
        """`command` in the fresh venv, as a shell that activated it would run it: no PYTHONPATH, cwd outside."""
        environment = {key: value for key, value in os.environ.items()
                       if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        environment["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
        return subprocess.run([str(part) for part in command], cwd=cwd, env=environment, capture_output=True,
                              text=True, timeout=120, check=False)


def build_wheel(source: Path, wheel_dir: Path) -> Path:
    """The wheel, built from a copy of the packaging files and the code: no build/ in the checkout, and no
    stale copy of a module deleted since an earlier build can slip into the wheel."""
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "tasks", source / "tasks", ignore=ignore)
    shutil.copytree(REPO / "plugins" / "freshet_airflow", source / "plugins" / "freshet_airflow", ignore=ignore)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "--wheel-dir", str(wheel_dir), str(source)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    (wheel,) = wheel_dir.glob("freshet-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    wheel = build_wheel(root / "source", root / "wheels")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site_packages,) = (venv / "lib").glob("python3*/site-packages")
    (site_packages / "freshet-lock.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    fresh = Installed(wheel, venv, site_packages)
    before = fresh.run("python", "-c", "import tasks", cwd=root)
    assert before.returncode != 0 and "No module named 'tasks'" in before.stderr, (
        "the checkout is visible from the fresh venv before the wheel is installed: " + before.stderr[-1000:])
    # pip from the lock, run by the fresh venv's python: it installs there, and writes the `freshet` script
    # for that python. --ignore-installed: the editable install in the lock is never touched.
    result = fresh.run("python", "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                       "--disable-pip-version-check", str(wheel), cwd=root)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return fresh


def test_the_wheel_holds_every_module_and_file_of_both_packages(installed: Installed) -> None:
    in_wheel = {name for name in zipfile.ZipFile(installed.wheel).namelist() if ".dist-info/" not in name}
    in_checkout = source_files("tasks") | source_files("freshet_airflow")
    assert sorted(in_checkout - in_wheel) == [], "files of the checkout missing from the wheel"
    assert sorted(in_wheel - in_checkout) == [], "files in the wheel that the checkout does not have"
    # Every directory of Python modules is a package, or discovery would have skipped it.
    packages = {Path(name).parent.as_posix() for name in in_checkout if name.endswith(".py")}
    assert sorted(package for package in packages if f"{package}/__init__.py" not in in_checkout) == []


@pytest.mark.parametrize(("command", "says"), [
    (("freshet", "--help"), "freshet <command>"),
    (("freshet", "step", "crawl", "--help"), "--run-id"),
    (("python", "-m", "tasks.serve", "--help"), "--config"),
], ids=["freshet", "freshet-step-crawl", "tasks.serve"])
def test_the_installed_commands_run_outside_the_checkout(installed: Installed, tmp_path: Path,
                                                         command: tuple[str, ...], says: str) -> None:
    executable = shutil.which(command[0], path=str(installed.venv / "bin"))
    assert executable is not None and Path(executable).parent == installed.venv / "bin", f"no {command[0]} in the venv"
    result = installed.run(executable, *command[1:], cwd=tmp_path)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    assert says in result.stdout, result.stdout[-2000:]


def test_the_packages_resolve_inside_the_fresh_venv(installed: Installed, tmp_path: Path) -> None:
    # find_spec, not import, for freshet_airflow: importing it would import Airflow (seconds), and where the
    # module file lies is the question.
    script = ("import importlib.util, tasks, tasks.models.build, tasks.training.loop, tasks.demo.runner\n"
              "print(tasks.__file__)\n"
              "print(importlib.util.find_spec('freshet_airflow').origin)\n")
    result = installed.run("python", "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for origin in map(Path, result.stdout.split()):
        assert origin.is_relative_to(installed.site_packages), f"{origin} is not from the installed wheel"
        assert not origin.is_relative_to(REPO)
