"""The `freshet` command: run the demo, a single step, the demo source, or a rollback."""

from __future__ import annotations

import argparse
import getpass
import importlib
import json
import sys
from collections.abc import Sequence

from tasks.contract import STEPS

USAGE = """freshet <command> [args]

  demo [--days N] [--fresh]        the whole pipeline on the embedded default (Airflow + MLflow on SQLite)
  step <name> --config ... ...     run one step (same as python -m tasks.<name>); steps: {steps}
  demo-corpus --out F --labels ..  build the Debian demo corpus
  demo-site --corpus F ...         serve a corpus day by day over HTTP
  rollback --config F --why TEXT   move the champion alias back to the previous version
"""


def rollback_main(argv: Sequence[str]) -> int:
    from tasks.config import load_config
    from tasks.contract import StepError
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
    modules = {"demo": "tasks.demo", "demo-corpus": "tasks.demo_corpus", "demo-site": "tasks.demo_site"}
    if command in modules:
        return importlib.import_module(modules[command]).main(rest)
    if command == "rollback":
        return rollback_main(rest)
    print(f"freshet: unknown command {command!r}\n\n" + USAGE.format(steps=", ".join(STEPS)), file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
