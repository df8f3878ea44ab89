"""freshet demo on an existing home: it goes on with the next days at the same volume (new packages, the
old ones keep their day), says plainly when nothing is new, and reports only this invocation's runs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tasks.demo.corpus import extend_debian_corpus
from tasks.demo.runner import DemoError, find_run, plan_days, summarize_run, write_demo_state
from tasks.demo.site import build_documents
from tasks.store import ArtifactStore

START = dt.date(2026, 11, 1)


def packages(section_sizes: dict[str, int]) -> str:
    return "\n".join(f"Package: {section}-{index:03d}\nDescription: {section} package {index}\nSection: {section}\n"
                     for section, size in section_sizes.items() for index in range(size))


def corpus_rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


def test_a_corpus_grows_by_whole_days_of_unpublished_packages(tmp_path):
    source, path = packages({"libs": 20, "doc": 10}), tmp_path / "corpus.jsonl"
    assert extend_debian_corpus(path, ["libs", "doc"], rows_per_day=6, first_day=0, days=2, source_text=source) == 12
    first = corpus_rows(path)
    assert sorted(row["day"] for row in first.values()) == [0] * 6 + [1] * 6

    assert extend_debian_corpus(path, ["libs", "doc"], rows_per_day=6, first_day=2, days=3, source_text=source) == 18
    grown = corpus_rows(path)
    assert {key: grown[key] for key in first} == first, "published days keep their packages"
    assert sorted(row["day"] for key, row in grown.items() if key not in first) == [2] * 6 + [3] * 6 + [4] * 6
    assert extend_debian_corpus(path, ["libs", "doc"], rows_per_day=6, first_day=5, days=1, source_text=source) == 0


def test_the_site_publishes_each_record_on_its_day(tmp_path):
    records = [{"id": f"r{index}", "text": f"text {index}", "label": "a" if index % 2 else "b", "day": index % 3}
               for index in range(9)]
    documents = build_documents(records, START, days=2, initial_fraction=0.0, corrupt_labels_from=None)
    for day in range(3):
        page = documents[f"/feed/{START + dt.timedelta(days=day)}.jsonl"].body.decode().splitlines()
        assert sorted(json.loads(line)["id"] for line in page) == sorted(f"r{i}" for i in range(9) if i % 3 == day)


def test_a_home_goes_on_after_the_days_it_ran_and_refuses_other_settings(tmp_path):
    plan = plan_days(tmp_path, START, 100, 2)
    assert (plan.first_day, plan.days) == (0, 2)
    write_demo_state(tmp_path, plan, 2)
    again = plan_days(tmp_path, START, 100, 3)
    assert (again.first_day, again.days, again.logical_date(again.first_day)) == (2, 3, dt.date(2026, 11, 3))
    with pytest.raises(DemoError, match="--fresh"):
        plan_days(tmp_path, START, 500, 1)


def test_a_home_from_before_the_day_record_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "corpus.jsonl").write_text("")
    with pytest.raises(DemoError, match="--fresh"):
        plan_days(tmp_path, START, 100, 1)


def crawl_manifest(store: ArtifactStore, run_id: str, day: str, created_at: str, rows_new: int) -> None:
    store.write_json({"step": "crawl", "run_id": run_id, "uri": "file:///x", "fingerprint": "f", "config_hash": "c",
                      "logical_date": day, "created_at": created_at,
                      "metrics": {"rows_new": rows_new, "rows_quarantined": 0}}, "runs", run_id, "crawl",
                     "manifest.json")


def test_the_summary_reports_this_invocations_run_and_says_when_it_ended_at_new_data(tmp_path):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    crawl_manifest(store, "earlier", "2026-11-01", "2026-11-02T00:00:00+00:00", rows_new=400)
    crawl_manifest(store, "this", "2026-11-01", "2026-12-01T10:00:00+00:00", rows_new=0)
    assert find_run(store, START, since="2026-12-01T09:00:00+00:00") == "this"
    assert find_run(store, START, since="2026-12-01T11:00:00+00:00") is None
    lines = summarize_run(store, "this")
    assert "steps completed: crawl" in lines[0]
    assert any("ended at new_data" in line for line in lines)
