"""tasks.demo.corpus: Debian control-file parsing and corpus building."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tasks.demo import corpus as demo_corpus
from tasks.demo.corpus import (
    CorpusError,
    build_debian_corpus,
    parse_debian_packages,
    parse_debian_translations,
    stratified_sample,
)

PACKAGES = """\
Package: python3-yaml
Version: 6.0-3+b2
Depends: python3 (<< 3.12),
 libyaml-0-2 (>= 0.2.2~)
Description: YAML parser and emitter for Python3
 PyYAML is a YAML parser and emitter for Python.
 .
 It supports YAML 1.1.
   verbatim example line
Description-md5: 6b427841deb10f77a5f50e5f6b5a05d8
Section: python
Tag: devel::lang:python,
 implemented-in::python

Package: python3-yaml
Description: a later duplicate stanza that must be ignored
Section: python

Package: snapd-contrib-tool
Description: a tool from contrib
Section: contrib/utils

Package: firmware-thing
Description: firmware blob loader
Section: non-free/utils
Description-md5: 0123456789abcdef0123456789abcdef

Package: no-section
Description: has no section, so no label

Package: no-description
Section: utils
"""

TRANSLATIONS = """\
Package: firmware-thing
Description-md5: 0123456789abcdef0123456789abcdef
Description-en: firmware blob loader
 Loads the blobs.
 .
 Nothing else.
"""


def test_parse_short_takes_synopsis_dedupes_and_strips_archive_area() -> None:
    records = list(parse_debian_packages(PACKAGES))
    assert records == [
        {"id": "python3-yaml", "text": "YAML parser and emitter for Python3", "label": "python"},
        {"id": "snapd-contrib-tool", "text": "a tool from contrib", "label": "utils"},
        {"id": "firmware-thing", "text": "firmware blob loader", "label": "utils"},
    ]


def test_parse_long_adds_description_with_blank_lines_for_dots() -> None:
    records = {record["id"]: record["text"] for record in parse_debian_packages(PACKAGES, text="long")}
    assert records["python3-yaml"] == (
        "YAML parser and emitter for Python3\n"
        "PyYAML is a YAML parser and emitter for Python.\n"
        "\n"
        "It supports YAML 1.1.\n"
        "  verbatim example line"
    )
    assert records["firmware-thing"] == "firmware blob loader"  # no long text without translations


def test_parse_long_completes_synopsis_from_translation_en() -> None:
    translations = parse_debian_translations(TRANSLATIONS)
    records = {record["id"]: record["text"]
               for record in parse_debian_packages(PACKAGES, text="long", translations=translations)}
    assert records["firmware-thing"] == "firmware blob loader\nLoads the blobs.\n\nNothing else."


def _packages(section_sizes: dict[str, int]) -> str:
    return "\n".join(f"Package: {section}-{index:03d}\nDescription: {section} package {index}\nSection: {section}\n"
                     for section, size in section_sizes.items() for index in range(size))


def test_build_filters_labels_samples_stratified_and_sorts(tmp_path: Path) -> None:
    source = _packages({"libs": 60, "python": 30, "doc": 10, "games": 50})
    out = tmp_path / "corpus.jsonl"
    counts = build_debian_corpus(out, ["libs", "python", "doc"], max_rows=20, seed=3, source_text=source)
    assert counts == Counter({"libs": 12, "python": 6, "doc": 2})
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert set(rows[0]) == {"id", "text", "label"}
    again = tmp_path / "again.jsonl"
    build_debian_corpus(again, ["libs", "python", "doc"], max_rows=20, seed=3, source_text=source)
    assert again.read_text() == out.read_text()


def test_stratified_sample_keeps_every_row_when_under_the_cap() -> None:
    rows = [{"id": f"r{index}", "text": "t", "label": "a"} for index in range(5)]
    assert stratified_sample(rows, 10, seed=0) == rows


def test_build_rejects_labels_with_no_packages(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"pyhton"):
        build_debian_corpus(tmp_path / "c.jsonl", ["python", "pyhton"], source_text=_packages({"python": 3}))


def test_empty_apt_index_tells_the_user_to_run_apt_get_update(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    def empty_dumpavail(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(demo_corpus.subprocess, "run", empty_dumpavail)
    with pytest.raises(CorpusError, match=r"apt-get update"):
        build_debian_corpus(tmp_path / "c.jsonl", ["libs", "python"])


def test_long_text_without_translation_lists_names_the_apt_command(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"apt-get update -o Acquire::Languages=en"):
        demo_corpus.read_apt_translations(lists_dir=tmp_path)
