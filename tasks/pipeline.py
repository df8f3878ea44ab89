"""The pipeline's steps, in order: what each one reads and whether a retry can help it.

One registry for everything that lists steps: the `freshet step` command, the demo summary and the
Airflow factory (each step's `--input`s and its retry policy) all read it. Each step is the module
`tasks.<name>` with `run(config, inputs, ...) -> Manifest` and `main(argv)`.

`STEPS` is the `freshet` DAG's pipeline, in order. `PRODUCTION_STEPS` run in DAGs of their own (`dag`):
batch scoring (`freshet_score`), the production monitor (`freshet_monitor`) and the labelling queue
(`freshet_label`), which read no manifest of the pipeline's run, only the registry, the prediction log and the
artifact store's history. `STEP_NAMES` names them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    inputs: tuple[str, ...] = ()  # this run's manifests the step reads
    network: bool = False  # talks to a remote service: a retry with backoff can succeed
    dag: str = "freshet"  # the DAG that runs it

    @property
    def module(self) -> str:
        return f"tasks.{self.name}"


STEPS: tuple[Step, ...] = (
    Step("crawl", "fetch the new and changed records of every source", network=True),
    Step("validate", "Great Expectations suite and batch checks; quarantine with reasons", ("crawl",)),
    Step("clean", "normalise, scrub, de-duplicate, split, guard against leakage", ("validate",)),
    Step("augment", "EDA and lexicon augmentation, class balancing", ("clean",)),
    Step("decide", "train only on enough new rows, drift or no champion yet", ("validate",)),
    Step("train", "fine-tune under torchrun (one process or DDP), warm start with replay", ("augment", "clean")),
    Step("evaluate", "candidate vs champion on the frozen, fresh and old slices; the gate policy", ("train", "clean")),
    Step("compress", "int8, ONNX, distilled student; re-gated; the serving variant", ("train", "evaluate", "clean")),
    Step("register", "MLflow model version, challenger alias, fresh-process serving check",
         ("train", "evaluate", "compress", "validate", "clean"), network=True),
    Step("promote", "champion alias by check-and-set; previous keeps the old champion", ("register",), network=True),
)
PRODUCTION_STEPS: tuple[Step, ...] = (
    Step("score", "batch-score an unlabelled drop folder with the champion (challenger in shadow)", dag="freshet_score"),
    Step("monitor", "prediction and input drift vs the version's reference, label-free F1 estimate, real F1 on "
         "feedback; breach -> production drift", dag="freshet_monitor"),
    Step("label", "the day's labelling budget from the scored texts (uncertainty, diversity, class balance, a random "
         "control), queued in Label Studio", network=True, dag="freshet_label"),
)
ALL_STEPS: tuple[Step, ...] = STEPS + PRODUCTION_STEPS
PIPELINE_STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in ALL_STEPS)
_BY_NAME = {step.name: step for step in ALL_STEPS}


def step(name: str) -> Step:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; steps: {', '.join(STEP_NAMES)}") from None
