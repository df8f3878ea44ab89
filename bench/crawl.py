"""Crawl throughput per source kind against a local demo site, politeness delays off.

Serves a synthetic corpus with `tasks.demo.site` on loopback and crawls it through each source
kind (the real fetch path: robots, guard, conditional GET, byte caps, parsing, de-duplication),
first cold, then again (every document answers 304), through `open_client` (the transport that holds
every response to its deadline and minimum rate). The anchor is a bare `httpx.Client.get` loop over
the same URLs the cold crawl requested, so the ratio is the cost of our fetch path and parsing.
MLflow and the artifact store are left out: this times the crawl itself. Printed, not asserted.

    python bench/crawl.py [--rows 3000] [--days 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

START = dt.date(2026, 11, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000, help="synthetic corpus size")
    parser.add_argument("--days", type=int, default=4, help="days the site publishes after day 0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tasks.demo.corpus import write_corpus
    from tests.corpus_support import synthetic_corpus

    work = Path(tempfile.mkdtemp(prefix="freshet-bench-crawl-"))
    corpus = work / "corpus.jsonl"
    write_corpus(synthetic_corpus(args.rows, ["alpha", "beta", "gamma", "delta"], seed=0), corpus)
    last_day = START + dt.timedelta(days=args.days)
    # The site runs in its own process: in this one it would compete with the crawler for the GIL.
    command = [sys.executable, "-m", "tasks.demo.site", "--corpus", str(corpus), "--start-date", START.isoformat(),
               "--days", str(args.days), "--port", "0", "--initial-fraction", "0.5"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO) as process:
        assert process.stdout is not None
        site_url = process.stdout.readline().strip()
        try:
            crawl_site(site_url, args, last_day)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    return 0


def crawl_site(site_url: str, args: argparse.Namespace, last_day: dt.date) -> None:
    import httpx

    from tasks.config import CrawlConfig
    from tasks.sources import SOURCE_KINDS, crawl_source
    from tasks.sources.fetch import HostPacer, SourceFetcher
    from tasks.sources.report import SourceReport
    from tasks.sources.session import source_location
    from tasks.sources.transport import open_client

    common = {"allow_private_network": True}
    sources = {
        "jsonl_feed": {"name": "jsonl", "url": site_url},
        "html_site": {"name": "html", "kind": "html_site", "url": site_url, "record_paths": ["^/pages/"],
                      "follow_links": False, "max_pages": 10 * args.rows,
                      "text": {"method": "selector", "selector": "p.text"},
                      "label": {"selector": "meta[name='freshet:label']", "attribute": "content"}},
        "html_site+trafilatura": {"name": "html-t", "kind": "html_site", "url": site_url,
                                  "record_paths": ["^/pages/"], "follow_links": False,
                                  "max_pages": 10 * args.rows,
                                  "label": {"selector": "meta[name='freshet:label']", "attribute": "content"}},
        "feed": {"name": "rss", "kind": "feed", "url": site_url + "rss/{date}.xml", "text": "summary"},
        "debian_index": {"name": "deb", "kind": "debian_index", "url": site_url + "debian/{date}/Packages.xz"},
    }
    print(f"demo site: {args.rows} records over {args.days + 1} days, crawled up to {last_day}; "
          f"min_interval_s=0; {sys.platform}")
    print(f"{'kind':24} {'requests':>8} {'records':>8} {'cold pages/s':>13} {'304 pages/s':>12} "
          f"{'bare GET pages/s':>17} {'cold/bare':>9} {'cold records/s':>15}")
    for kind, source in sources.items():
        config = CrawlConfig.model_validate({"sources": [{**source, **common}], "min_interval_s": 0.0})
        settings = config.sources[0]
        with open_client(config) as client, httpx.Client(trust_env=False, timeout=10) as bare:
            state: dict = {"generation": 0, "pages": {}, "records": {}}
            timings = []
            for _ in range(2):
                report = SourceReport(settings.name, source_location(settings))
                fetcher = SourceFetcher(client, config, settings, report, HostPacer(0.0),
                                        SOURCE_KINDS[settings.kind].accepts)
                started = time.perf_counter()
                result = crawl_source(fetcher, state, last_day, "bench", last_day.isoformat())
                timings.append((time.perf_counter() - started, report, len(result.rows)))
                state = result.state
            urls = list(state["pages"])
            started = time.perf_counter()
            for url in urls:
                bare.get(url).read()
            bare_s = time.perf_counter() - started
        (cold_s, cold, records), (warm_s, warm, _) = timings
        cold_pages = cold.pages_fetched + cold.pages_not_modified
        warm_pages = warm.pages_fetched + warm.pages_not_modified
        bare_rate = len(urls) / bare_s
        print(f"{kind:24} {cold_pages:8d} {records:8d} {cold_pages / cold_s:13.1f} {warm_pages / warm_s:12.1f} "
              f"{bare_rate:17.1f} {cold_pages / cold_s / bare_rate:9.2f} {records / cold_s:15.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
