"""`freshet ui airflow|mlflow --config F [--home H]`: the Airflow or the MLflow UI over a pipeline's own stores,
from any directory (`make airflow-ui` / `make mlflow-ui` with `CONFIG=` and `FRESHET_HOME=` run the same).

MLflow: the tracking URI the config names. A relative SQLite path (`sqlite:///mlflow.db`) is where the steps
created it: they resolve it against the directory they ran in, which for `freshet demo` is the directory it was
started from; here it resolves against the config's directory unless `--relative-to` names another (the demo
prints that for you). Airflow: `airflow standalone` over the home's SQLite metadata DB, with the DAGs of this
checkout and the config as FRESHET_CONFIG, the training pool created first.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.demo.airflow_home import airflow_env, prepare_airflow
from tasks.tracking import default_artifact_location

MLFLOW_PORT = 5000


def freshet_command() -> list[str]:
    """The `freshet` command of this interpreter's environment, by absolute path (no PATH needed)."""
    script = Path(sys.executable).parent / "freshet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tasks.cli"]


def absolute_tracking_uri(uri: str, relative_to: Path) -> str:
    """A tracking URI with a relative local path (`sqlite:///mlflow.db`, a plain file-store path) made absolute
    against `relative_to`; a server, an absolute path or another database unchanged."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(relative_to / uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri and not Path(uri).is_absolute():
        return str((relative_to / uri).resolve())
    return uri


def mlflow_ui_command(config: PipelineConfig, config_path: Path, relative_to: Path | None = None,
                      port: int = MLFLOW_PORT) -> list[str] | None:
    """`mlflow ui` over the config's tracking store and its experiments' artifact location; None for a
    tracking server (it serves its own UI at that address)."""
    uri = absolute_tracking_uri(config.mlflow.tracking_uri, relative_to or config_path.parent)
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    artifacts = config.mlflow.artifact_location or default_artifact_location(uri, config.artifact_root)
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    return [*command, "--host", "127.0.0.1", "--port", str(port)]


def ui_command(which: str, config_path: Path, home: Path, relative_to: Path | None = None) -> list[str]:
    """The `freshet ui` command line for `which` UI, with absolute paths (what the demo prints)."""
    command = [*freshet_command(), "ui", which, "--config", str(config_path), "--home", str(home)]
    return [*command, "--relative-to", str(relative_to)] if relative_to is not None else command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freshet ui", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=("airflow", "mlflow"))
    parser.add_argument("--config", required=True, help="the pipeline config the runs used")
    parser.add_argument("--home", default=os.environ.get("FRESHET_HOME", ".freshet"),
                        help="the freshet home (Airflow's metadata DB under <home>/airflow); default $FRESHET_HOME")
    parser.add_argument("--relative-to", type=Path, default=None,
                        help="the directory a relative tracking path is relative to (default: the config's)")
    parser.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = parser.parse_args(argv)
    config_path, home = Path(args.config).resolve(), Path(args.home).resolve()
    os.environ["FRESHET_HOME"] = str(home)  # for configs that name ${FRESHET_HOME}, as the demo sets it
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"freshet ui: {error}", file=sys.stderr)
        return 2
    if args.which == "mlflow":
        command = mlflow_ui_command(config, config_path, args.relative_to)
        if command is None:
            print(f"freshet ui: {config.mlflow.tracking_uri} is a tracking server: open it in a browser")
            return 0
        environment = dict(os.environ)
    else:
        environment = airflow_env(home, config_path)
        # `airflow standalone` starts its components as `airflow ...` processes: this environment's.
        environment["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), environment.get("PATH")]))
        command = [str(Path(sys.executable).parent / "airflow"), "standalone"]
        if not args.print:
            prepare_airflow(environment, config)
    if args.print:
        settings = [f"{key}={value}" for key, value in environment.items() if os.environ.get(key) != value]
        print(shlex.join(["env", *settings, *command] if settings else command))
        return 0
    os.execve(command[0], command, environment)


if __name__ == "__main__":
    raise SystemExit(main())
