"""Artifact store: `runs/<run_id>/<step>/...` under a root that is a local path or any fsspec URL.

Steps write into a local staging directory; `commit` moves it into place in one step (a rename on a
local root; on object stores the manifest, written last, is the commit point). Cross-run state
(crawl state, the history of accepted snapshots) lives under `state/`, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_path(path: Path) -> str:
    """Content digest of a file, or of a directory tree (relative names and file digests)."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return "sha256:" + digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(temporary, 0o644)  # mkstemp makes 0600; steps in containers may run as another user
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


class ArtifactStore:
    def __init__(self, root: str) -> None:
        self.root_url = root.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.root_url)
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            self._root = os.path.abspath(self._root)
            Path(self._root).mkdir(parents=True, exist_ok=True)

    def _join(self, *parts: str) -> str:
        return "/".join([self._root, *parts])

    def uri(self, *parts: str) -> str:
        path = self._join(*parts)
        return f"file://{path}" if self.is_local else self.fs.unstrip_protocol(path)

    def step_prefix(self, run_id: str, step: str) -> str:
        return self._join("runs", safe_run_id(run_id), step)

    def step_uri(self, run_id: str, step: str, *parts: str) -> str:
        return self.uri("runs", safe_run_id(run_id), step, *parts)

    def read_json(self, *parts: str) -> Any | None:
        path = self._join(*parts)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "r") as handle:
            return json.load(handle)

    def write_json(self, value: Any, *parts: str) -> None:
        text = json.dumps(value, indent=2, sort_keys=True, default=str)
        path = self._join(*parts)
        if self.is_local:
            atomic_write_text(Path(path), text)
        else:
            with self.fs.open(path, "w") as handle:
                handle.write(text)

    @contextmanager
    def staging(self, run_id: str, step: str) -> Iterator[Path]:
        """A fresh local directory to write a step's outputs into; removed if the step fails."""
        base = Path(self._join("runs", safe_run_id(run_id))) if self.is_local else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
            # A step killed mid-write (SIGKILL, a lost machine) leaves its staging behind: the retry sweeps it.
            for stale in [*base.glob(f".{step}.staging-*"), *base.glob(f".{step}.retired-*")]:
                shutil.rmtree(stale, ignore_errors=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{step}.staging-", dir=base))
        try:
            yield staged
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)

    def commit(self, staged: Path, run_id: str, step: str) -> None:
        """Replace `runs/<run_id>/<step>/` with the staged directory (the manifest inside it last)."""
        final = self.step_prefix(run_id, step)
        if self.is_local:
            final_path = Path(final)
            if final_path.exists():
                retired = final_path.with_name(f".{step}.retired-{uuid.uuid4().hex[:8]}")
                os.replace(final_path, retired)
                os.replace(staged, final_path)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staged, final_path)
            return
        if self.fs.exists(final):
            self.fs.rm(final, recursive=True)
        manifest = staged / "manifest.json"
        for file in sorted(p for p in staged.rglob("*") if p.is_file() and p != manifest):
            self.fs.put_file(str(file), f"{final}/{file.relative_to(staged).as_posix()}")
        self.fs.put_file(str(manifest), f"{final}/manifest.json")

    def run_directories(self) -> list[str]:
        """Names of the run folders under `runs/` (file-system-safe run ids), sorted."""
        prefix = self._join("runs")
        if not self.fs.exists(prefix):
            return []
        return sorted(path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(prefix, detail=False)
                      if not path.rstrip("/").rsplit("/", 1)[-1].startswith("."))

    def work_dir(self, run_id: str, step: str) -> Path:
        """Scratch space that survives a process restart (checkpoints); outside the step prefix."""
        if self.is_local:
            path = Path(self._join("runs", safe_run_id(run_id), f"{step}.work"))
        else:
            cache = Path(os.environ.get("FRESHET_CACHE", Path(tempfile.gettempdir()) / "freshet-cache"))
            path = cache / "work" / hashlib.sha256(self.root_url.encode()).hexdigest()[:12] / safe_run_id(run_id) / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def local_path(self, uri: str) -> Path:
        """A local path for an artifact URI; remote artifacts are downloaded to a cache once."""
        fs, path = fsspec.core.url_to_fs(uri)
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        if "file" in protocols:
            return Path(path)
        cache = Path(os.environ.get("FRESHET_CACHE", Path(tempfile.gettempdir()) / "freshet-cache"))
        target = cache / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(path).name
        if not target.exists():
            fs.get(path, str(target), recursive=fs.isdir(path))
        return target


def safe_run_id(run_id: str) -> str:
    """Airflow run ids contain ':' and '+'; keep them readable but filesystem- and URL-safe."""
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in run_id)
