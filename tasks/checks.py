"""One check type and one vocabulary for every judgement a step makes: validate's batch checks, the gate,
the monitor, and the webhook that reports a rejection.

A check holds the measured value, the bound it is held to and how (`>=`: at least, `<=`: at most), its verdict
(`passed`, `failed` or `skipped`, with why in `detail`), and the config setting holding the bound where there is one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict

Comparison = Literal[">=", "<="]
CheckVerdict = Literal["passed", "failed", "skipped"]


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    value: float | None
    bound: float | None
    comparison: Comparison
    verdict: CheckVerdict
    detail: str = ""
    setting: str | None = None  # the config field holding the bound (validate.*, monitor.*), where one does


def measurable(value: Any) -> TypeGuard[float]:
    """A number a check can judge: not None, not NaN."""
    return isinstance(value, int | float) and not math.isnan(value)


def meets(value: float, bound: float, comparison: Comparison) -> bool:
    return value >= bound if comparison == ">=" else value <= bound


def judge(name: str, value: float, bound: float, comparison: Comparison, detail: str = "", *,
          setting: str | None = None) -> Check:
    """`passed` when `value comparison bound` holds, else `failed`."""
    return Check(name=name, value=float(value), bound=bound, comparison=comparison,
                 verdict="passed" if meets(value, bound, comparison) else "failed", detail=detail, setting=setting)


def skipped(name: str, value: float | None, bound: float | None, comparison: Comparison, detail: str, *,
            setting: str | None = None) -> Check:
    """Reported, not judged: `detail` says why."""
    return Check(name=name, value=value, bound=bound, comparison=comparison, verdict="skipped", detail=detail,
                 setting=setting)


def failed(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if check.verdict == "failed"]
