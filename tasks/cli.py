"""The `freshet` command: run the demo, a single step, the demo source, the UIs, a rollback, the champion history,
or the model server."""

from __future__ import annotations

import argparse
import getpass
import importlib
import json
import sys
from collections.abc import Sequence

from tasks.pipeline import STEP_NAMES as STEPS

USAGE = """freshet <command> [args]

  demo [--days N] [--fresh]        the whole pipeline on the embedded default (Airflow + MLflow on SQLite);
       [--config F] [--force-training]  or on your config; exits 1 naming the failed task when a run fails
  ui airflow|mlflow --config F     the Airflow or MLflow UI over that config's stores (--home H), from anywhere
  step <name> --config ... ...     run one step (same as python -m tasks.<name>); steps: {steps}
  demo-corpus --out F --labels ..  build the Debian demo corpus
  demo-site --corpus F ...         serve a corpus day by day over HTTP
  rollback --config F --why TEXT   move the champion alias back to the previous version
  history --config F [--at T]      the champion timeline from MLflow (or which version was champion at T)
  serve --config F [--host --port] serve models:/<name>@champion over HTTP, following the alias (docs/serving.md)
"""


def rollback_main(argv: Sequence[str]) -> int:
    # lazy: `freshet <command>` loads its own command's modules only (tasks.promote brings torch, 5 s measured)
    from tasks.config import load_config
    from tasks.manifest import StepError
    from tasks.promote import rollback

    parser = argparse.ArgumentParser(prog="freshet rollback")
    parser.add_argument("--config", required=True)
    parser.add_argument("--why", required=True, help="recorded on the demoted version")
    parser.add_argument("--who", default=getpass.getuser())
    args = parser.parse_args(argv)
    try:
        print(json.dumps(rollback(load_config(args.config), who=args.who, why=args.why)))
    except StepError as error:
        print(f"freshet rollback: {error}", file=sys.stderr)
        return 2
    return 0


def history_main(argv: Sequence[str]) -> int:
    # lazy: `freshet <command>` loads its own command's modules only (0.14 s measured for these)
    from tasks import model_registry
    from tasks.config import load_config

    parser = argparse.ArgumentParser(prog="freshet history",
                                     description="Which version held `champion` when, read from MLflow version tags.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--at", default=None, help="ISO 8601 instant (naive = UTC): print only the champion then")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    client = model_registry.client(config)
    name = config.mlflow.model_name
    if args.at is not None:
        try:
            version = model_registry.champion_at(client, name, args.at)
        except ValueError as error:
            print(f"freshet history: --at {args.at!r} is not an ISO 8601 time: {error}", file=sys.stderr)
            return 2
        print(json.dumps({"model": name, "at": args.at, "champion": version}) if args.json else
              f"{name}@champion at {args.at}: " + (f"version {version}" if version else "none"))
        return 0
    timeline = model_registry.history(client, name)
    if args.json:
        print(json.dumps({"model": name, "timeline": timeline}, indent=2))
        return 0
    if not timeline:
        print(f"{name}: no version has been champion yet")
        return 0
    print(f"{name}: champion timeline (UTC)")
    # As wide as the longest "by" ("airflow dag_id=freshet run_id=..."): a cut one no longer says who.
    by_width = max(len("by"), *(len(row["by"] or "?") for row in timeline))
    print(f"{'version':>7}  {'since':<32} {'until':<32} {'how':<9} {'by':<{by_width}} why / ended by")
    for row in timeline:
        ended = f" | ended: {row['ended_by']}" if row.get("ended_by") else ""
        print(f"{row['version']:>7}  {row['since'] or '?':<32} {row['until'] or '(current)':<32} {row['kind']:<9} "
              f"{row['by'] or '?':<{by_width}} {row['why'] or ''}{ended}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(steps=", ".join(STEPS)))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "step":
        if not rest or rest[0] not in STEPS:
            print(f"freshet step: name one of {', '.join(STEPS)}", file=sys.stderr)
            return 2
        return importlib.import_module(f"tasks.{rest[0]}").main(rest[1:])
    modules = {"demo": "tasks.demo.runner", "demo-corpus": "tasks.demo.corpus", "demo-site": "tasks.demo.site",
               "serve": "tasks.serve.app", "ui": "tasks.demo.ui"}
    if command in modules:
        return importlib.import_module(modules[command]).main(rest)
    if command == "rollback":
        return rollback_main(rest)
    if command == "history":
        return history_main(rest)
    print(f"freshet: unknown command {command!r}\n\n" + USAGE.format(steps=", ".join(STEPS)), file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
