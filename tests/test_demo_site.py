"""tasks.demo.site: day-by-day publication over real HTTP, validators, robots, poisoning, CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tasks.demo.site import PRIVATE_PATH, DemoSite, is_unlabelled, publication_day, serve
from tests.corpus_support import SITE_START, synthetic_corpus

START = SITE_START
DAYS = 4
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


# `site` and `corpus_path` are conftest.py's, over these rows and days.
@pytest.fixture()
def corpus_rows() -> list[dict[str, str]]:
    return synthetic_corpus(200, ["alpha", "beta", "gamma"], seed=1)


@pytest.fixture()
def site_days() -> int:
    return DAYS


@pytest.fixture()
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5) as client:
        yield client


def _page_records(http: httpx.Client, site: DemoSite, date: dt.date) -> list[dict[str, str]]:
    response = http.get(site.url.rstrip("/") + site.page_path(date))
    return [json.loads(line) for line in response.text.splitlines()]


def test_publication_day_is_stable_and_respects_the_initial_fraction() -> None:
    ids = [f"id-{index}" for index in range(2000)]
    days = [publication_day(record_id, DAYS, 0.5) for record_id in ids]
    assert days == [publication_day(record_id, DAYS, 0.5) for record_id in ids]
    assert 0.45 < days.count(0) / len(days) < 0.55
    assert set(days) == set(range(DAYS + 1))
    assert {publication_day(record_id, 0, 0.5) for record_id in ids} == {0}


def test_index_lists_every_day_and_pages_partition_the_corpus(site: DemoSite, http: httpx.Client,
                                                             corpus_path: Path) -> None:
    response = http.get(site.url + "feed/index.json")
    assert response.headers["content-type"] == "application/json"
    pages = response.json()["pages"]
    assert [page["date"] for page in pages] == [(START + dt.timedelta(days=day)).isoformat() for day in range(DAYS + 1)]
    published = []
    for page in pages:
        records = _page_records(http, site, dt.date.fromisoformat(page["date"]))
        assert len(records) == page["records"]
        published.extend(records)
    corpus = [json.loads(line) for line in corpus_path.read_text().splitlines()]
    assert sorted(published, key=lambda record: record["id"]) == corpus
    assert pages[0]["records"] > pages[1]["records"]  # day 0 carries the initial half


def test_pages_answer_conditional_requests_with_304(site: DemoSite, http: httpx.Client) -> None:
    url = site.url.rstrip("/") + site.page_path(START)
    first = http.get(url)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/x-ndjson"
    etag, last_modified = first.headers["etag"], first.headers["last-modified"]
    assert last_modified == "Wed, 01 Jan 2025 00:00:00 GMT"

    assert http.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert http.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    assert http.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110).
    assert http.get(url, headers={"If-None-Match": '"stale"', "If-Modified-Since": last_modified}).status_code == 200
    assert http.get(url, headers={"If-Modified-Since": "Tue, 31 Dec 2024 00:00:00 GMT"}).status_code == 200

    path = site.page_path(START)
    assert site.requests_to(path, 200) == 4 and site.requests_to(path, 304) == 2
    assert site.requests_to(path) == 6


def test_robots_disallows_private_pages_that_exist(site: DemoSite, http: httpx.Client) -> None:
    robots = http.get(site.url + "robots.txt")
    assert robots.headers["content-type"].startswith("text/plain")
    assert "Disallow: /private/" in robots.text
    assert http.get(site.url.rstrip("/") + PRIVATE_PATH).status_code == 200
    assert http.get(site.url + "feed/1999-01-01.jsonl").status_code == 404
    assert site.stats[("/feed/1999-01-01.jsonl", 404)] == 1


def test_corrupt_labels_shift_labels_from_the_given_day(corpus_path: Path, http: httpx.Client) -> None:
    poison_from = START + dt.timedelta(days=2)
    with serve(corpus_path, START, DAYS) as clean, serve(corpus_path, START, DAYS,
                                                         corrupt_labels_from=poison_from) as poisoned:
        next_label = {"alpha": "beta", "beta": "gamma", "gamma": "alpha"}
        for day in range(DAYS + 1):
            date = START + dt.timedelta(days=day)
            honest, served = _page_records(http, clean, date), _page_records(http, poisoned, date)
            assert [record["id"] for record in honest] == [record["id"] for record in served]
            expected = [next_label[record["label"]] if date >= poison_from else record["label"] for record in honest]
            assert [record["label"] for record in served] == expected


def test_cli_serves_until_sigterm(corpus_path: Path) -> None:
    command = [sys.executable, "-m", "tasks.demo.site", "--corpus", str(corpus_path), "--start-date", "2025-01-01",
               "--days", "2", "--port", "0"]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=environment) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with httpx.Client(trust_env=False, timeout=5) as client:
                assert len(client.get(url + "feed/index.json").json()["pages"]) == 3
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_other_views_carry_the_same_day_records(site: DemoSite, http: httpx.Client) -> None:
    import gzip
    import lzma
    from xml.etree import ElementTree

    from tasks.demo.site import page_path
    from tasks.sources.debian_index import iter_control_stanzas

    date = START + dt.timedelta(days=1)
    records = {record["id"]: record for record in _page_records(http, site, date)}
    assert records
    namespace = {"sm": "http://www.sitemaps.org/schemas/sitemap/0.9"}

    index = http.get(site.url + "sitemap.xml")
    assert index.headers["content-type"] == "application/xml"
    lastmods = [element.text for element in ElementTree.fromstring(index.content).iterfind("sm:sitemap/sm:lastmod",
                                                                                           namespace)]
    assert lastmods == [(START + dt.timedelta(days=day)).isoformat() for day in range(DAYS + 1)]
    sitemap = ElementTree.fromstring(http.get(site.url + f"sitemaps/{date}.xml").content)
    locations = [element.text for element in sitemap.iterfind("sm:url/sm:loc", namespace)]
    assert locations == [page_path(record_id) for record_id in records]
    page = http.get(site.url.rstrip("/") + locations[0]).text
    first = records[next(iter(records))]
    assert f'<meta name="freshet:label" content="{first["label"]}">' in page and first["text"] in page
    assert "/private/secret.html" in http.get(site.url + "days/index.html").text  # linked, robots-disallowed

    rss = http.get(site.url + f"rss/{date}.xml")
    assert rss.headers["content-type"] == "application/rss+xml"
    items = ElementTree.fromstring(rss.content).findall("channel/item")
    assert {(item.findtext("guid"), item.findtext("description"), item.findtext("category")) for item in items} == {
        (record["id"], record["text"], record["label"]) for record in records.values()}

    plain = http.get(site.url + f"debian/{date}/Packages").content
    assert gzip.decompress(http.get(site.url + f"debian/{date}/Packages.gz").content) == plain
    assert lzma.decompress(http.get(site.url + f"debian/{date}/Packages.xz").content) == plain
    stanzas = list(iter_control_stanzas(plain.decode()))
    assert {(stanza["Package"], stanza["Description"], stanza["Section"]) for stanza in stanzas} == {
        (record["id"], record["text"], record["label"]) for record in records.values()}
    # Deterministic bytes: a restarted site serves the same ETag, so conditional requests keep working.
    etag = http.get(site.url + f"debian/{date}/Packages.gz").headers["etag"]
    assert http.get(site.url + f"debian/{date}/Packages.gz", headers={"If-None-Match": etag}).status_code == 304


def test_unlabelled_records_are_published_only_as_texts(corpus_path: Path, http: httpx.Client) -> None:
    corpus = {record["id"]: record for record in map(json.loads, corpus_path.read_text().splitlines())}
    with serve(corpus_path, START, DAYS, unlabelled_fraction=0.5) as site:
        labelled, unlabelled = [], []
        for day in range(DAYS + 1):
            date = START + dt.timedelta(days=day)
            labelled += _page_records(http, site, date)
            response = http.get(f"{site.url}unlabelled/{date}.jsonl")
            unlabelled += [json.loads(line) for line in response.text.splitlines()]
        rss = "".join(http.get(f"{site.url}rss/{START + dt.timedelta(days=day)}.xml").text for day in range(DAYS + 1))
    # The two partition the corpus; an unlabelled record has no label, and no other view names it.
    assert sorted([record["id"] for record in labelled + unlabelled]) == sorted(corpus)
    assert 0.35 < len(unlabelled) / len(corpus) < 0.65
    assert all(set(record) == {"id", "text"} and record["text"] == corpus[record["id"]]["text"] for record in unlabelled)
    assert all(is_unlabelled(record["id"], 0.5) for record in unlabelled)
    assert not any(f"<guid isPermaLink=\"false\">{record['id']}</guid>" in rss for record in unlabelled)
    with pytest.raises(ValueError, match="unlabelled_fraction"):
        DemoSite(corpus_path, START, DAYS, unlabelled_fraction=1.0)
