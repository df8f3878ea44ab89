"""`train.precision`: which arithmetic the trainer uses, and why (recorded in the manifest, MLflow and the demo).

`auto` is bf16 autocast where the hardware computes bf16 natively — CUDA, and CPUs with AVX512-BF16 or AMX
(bf16 training converges there like fp32: tests/test_train_options.py checks it on such a CPU; it trained
1.44x faster than fp32 on Zen 4) — and fp32 elsewhere, where bf16 is emulated and about 20x slower.
The CPU's flags can be injected (`flags`, or the FRESHET_CPU_FLAGS environment variable: space- or
comma-separated, empty = none), so the choice is testable on any machine; the tests pin it that way so
their numbers do not depend on the machine they run on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("freshet.train")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FLAGS_ENV = "FRESHET_CPU_FLAGS"


@dataclass(frozen=True)
class PrecisionChoice:
    use_bf16: bool
    native_bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.use_bf16 else "fp32"

    def facts(self) -> dict[str, object]:
        return {"precision": self.name, "native_bf16": self.native_bf16, "reason": self.reason}


def cpu_flags() -> set[str]:
    """This CPU's feature flags (FRESHET_CPU_FLAGS when set, else Linux /proc/cpuinfo; empty elsewhere)."""
    injected = os.environ.get(FLAGS_ENV)
    if injected is not None:
        return set(injected.replace(",", " ").split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively: AVX512-BF16 or AMX in `flags` (or FRESHET_CPU_FLAGS) when given,
    else oneDNN's own check."""
    if flags is None and os.environ.get(FLAGS_ENV) is not None:
        flags = cpu_flags()
    if flags is not None:
        return any(flag in set(flags) for flag in NATIVE_BF16_FLAGS)
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def choose_precision(setting: str, device_type: str, flags: Iterable[str] | None = None) -> PrecisionChoice:
    """bf16 or fp32 for `train.precision=setting` on `device_type`, with the reason in words."""
    if device_type == "cuda":
        native = True
        where = "CUDA computes bf16 natively"
    else:
        known = set(flags) if flags is not None else cpu_flags()
        native = cpu_has_native_bf16(flags)
        present = [flag for flag in NATIVE_BF16_FLAGS if flag in known]
        where = (f"this CPU computes bf16 natively ({', '.join(present) or 'oneDNN bf16'})" if native else
                 "this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated, ~20x slower")
    if setting == "fp32":
        return PrecisionChoice(False, native, f"train.precision=fp32 ({where})")
    if setting == "bf16":
        return PrecisionChoice(True, native, f"train.precision=bf16 ({where})")
    if native:
        return PrecisionChoice(True, True, f"train.precision=auto: bf16 autocast, since {where}")
    return PrecisionChoice(False, False, f"train.precision=auto: fp32, since {where}")
