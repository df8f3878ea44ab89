"""Shared test setup. Airflow reads its config at import time, so its home is set here first."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tasks.demo.site import DemoSite

REPO = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="freshet-test-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models on a shared 2-core machine: one thread per process is several times faster than two
# threads fighting another process for the cores.
os.environ.setdefault("FRESHET_THREADS_PER_RANK", "1")
os.environ.setdefault("FRESHET_CACHE", tempfile.mkdtemp(prefix="freshet-test-cache-"))
# train.precision=auto follows the CPU (bf16 where it is native): the tests pin "no native bf16" so what
# they train, and the numbers they compare, are the same on every machine (tests that need the real CPU
# or other flags set FRESHET_CPU_FLAGS themselves).
os.environ.setdefault("FRESHET_CPU_FLAGS", "")
# The plugins folder is on sys.path inside Airflow; mirror that for direct imports in tests.
sys.path.insert(0, str(REPO / "plugins"))


@pytest.fixture(scope="session")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow database per pytest session, shared by the step test modules (creating one costs seconds)."""
    directory = tmp_path_factory.getbasetemp() / "mlflow"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tracking database for one test module: creating a fresh one costs seconds per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


# ------------------------------------------------------------------------ a site to crawl, and the crawl

@pytest.fixture()
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff and pacing delays the crawler asked for; recorded instead of slept."""
    from tasks.sources import fetch

    recorded: list[float] = []
    monkeypatch.setattr(fetch, "pause", recorded.append)
    return recorded


@pytest.fixture()
def corpus_rows() -> list[dict[str, str]]:
    """The labelled rows the `site` fixture publishes; a module overrides this for another size or seed."""
    from tests.corpus_support import synthetic_corpus

    return synthetic_corpus(90, ["alpha", "beta", "gamma"], seed=0)


@pytest.fixture()
def site_days() -> int:
    """Days the `site` fixture publishes after its first (tests.corpus_support.SITE_START)."""
    from tests.corpus_support import SITE_DAYS

    return SITE_DAYS


@pytest.fixture()
def corpus_path(tmp_path: Path, corpus_rows: list[dict[str, str]]) -> Path:
    from tasks.demo.corpus import write_corpus

    path = tmp_path / "corpus.jsonl"
    write_corpus(corpus_rows, path)
    return path


@pytest.fixture()
def site(corpus_path: Path, site_days: int) -> Iterator[DemoSite]:
    """The demo's site on loopback: half the corpus on day 0, the rest over `site_days` days."""
    from tasks.demo.site import serve
    from tests.corpus_support import SITE_START

    with serve(corpus_path, SITE_START, site_days, initial_fraction=0.5) as started:
        yield started


@pytest.fixture()
def kill_html_crawl(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Callable[[], None]]:
    """kill_html_crawl(n): the HTML crawl raises KeyboardInterrupt at its n-th page, as if the worker were
    killed mid-crawl; the returned function lets the next crawl run normally again."""
    from tasks.sources.html_site import HtmlSiteCrawl

    real_crawl_page = HtmlSiteCrawl.crawl_page

    def arm(at_page: int) -> Callable[[], None]:
        calls = {"count": 0}

        def dies_at_page(self: HtmlSiteCrawl, url: str, depth: int) -> None:
            calls["count"] += 1
            if calls["count"] == at_page:
                raise KeyboardInterrupt
            real_crawl_page(self, url, depth)

        monkeypatch.setattr(HtmlSiteCrawl, "crawl_page", dies_at_page)
        return lambda: monkeypatch.setattr(HtmlSiteCrawl, "crawl_page", real_crawl_page)

    return arm


# ----------------------------------------------------------------- the model steps, run once per session


@pytest.fixture(scope="session")
def two_rounds(tmp_path_factory):
    """Two rounds of the model steps on a tiny BERT: the first makes a champion, the second warm-starts from it."""
    from tasks.store import ArtifactStore
    from tests.corpus_support import synthetic_corpus
    from tests.pipeline_support import LABELS, fake_upstream, run_model_steps, tiny_config

    root = tmp_path_factory.mktemp("model_steps")
    config = tiny_config(root)
    store = ArtifactStore(config.artifact_root)
    corpus = synthetic_corpus(600, LABELS, seed=1)
    first = run_model_steps(config, store, "run-1", "2026-11-01", fake_upstream(config, store, "run-1", "2026-11-01", corpus[:400]))
    second = run_model_steps(config, store, "run-2", "2026-11-02", fake_upstream(config, store, "run-2", "2026-11-02", corpus[400:]))
    return config, store, first, second
