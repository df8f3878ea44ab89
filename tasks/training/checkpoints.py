"""Checkpoint files: written atomically, the last two kept, a torn one skipped on resume."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("freshet.train")


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-{state['progress']['step']:08d}.pt"
    temporary = path.with_suffix(".pt.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    for old in sorted(directory.glob("checkpoint-*.pt"))[:-2]:  # keep the last two
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    for path in sorted(directory.glob("checkpoint-*.pt"), reverse=True):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            # a torn file from a crash: fall back to the previous one
            log.warning("ignoring unreadable checkpoint %s: %s", path, error)
    return None
