"""Build the demo corpus: Debian package descriptions labelled by Section.

The Debian corpus comes from the machine's own package index (`apt-cache dumpavail`), so it is real,
labelled and offline. Text is the one-line synopsis by default; `text="long"` adds the long
description, which apt keeps in its Translation-en lists (present after
`apt-get update -o Acquire::Languages=en`).

Output: JSON lines `{"id", "text", "label"}` sorted by id, the input of `tasks.demo.site`.

    python -m tasks.demo.corpus --out corpus.jsonl --labels libs,python,doc --max-rows 3000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.sources.debian_index import TextMode, description_text, iter_control_stanzas
from tasks.store import atomic_write_text

APT_UPDATE_HINT = "run `sudo apt-get update` first"
APT_TRANSLATIONS_HINT = "run `sudo apt-get update -o Acquire::Languages=en` first"
APT_LISTS_DIR = Path("/var/lib/apt/lists")


class CorpusError(RuntimeError):
    """The corpus cannot be built; the message says what to do about it."""


# ------------------------------------------------------------------------------ Debian control files


def parse_debian_translations(control_text: str) -> dict[str, str]:
    """Translation-en lists: Description-md5 -> full description (synopsis + continuation lines)."""
    return {
        stanza["Description-md5"]: stanza["Description-en"]
        for stanza in iter_control_stanzas(control_text)
        if "Description-md5" in stanza and "Description-en" in stanza
    }


def parse_debian_packages(
    control_text: str,
    text: TextMode = "short",
    translations: Mapping[str, str] | None = None,
) -> Iterator[dict[str, str]]:
    """Records {id, text, label} from a Packages file or `apt-cache dumpavail` output.

    id = package name (first stanza wins), label = Section without its archive area ("contrib/",
    "non-free/", ...). For `long`, a description that has no continuation lines is completed from
    `translations` (see `parse_debian_translations`) when its Description-md5 is there.
    """
    seen: set[str] = set()
    for stanza in iter_control_stanzas(control_text):
        name = stanza.get("Package")
        section = stanza.get("Section")
        description = stanza.get("Description") or stanza.get("Description-en")
        if not name or not section or not description or name in seen:
            continue
        seen.add(name)
        if text == "long" and "\n" not in description and translations:
            description = translations.get(stanza.get("Description-md5", ""), description)
        yield {"id": name, "text": description_text(description, text), "label": section.rsplit("/", 1)[-1]}


def _run_apt(command: Sequence[str]) -> str:
    try:
        completed = subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise CorpusError(f"`{command[0]}` not found: the Debian corpus needs a Debian/Ubuntu machine") from error
    except subprocess.CalledProcessError as error:
        raise CorpusError(f"`{' '.join(command)}` failed ({error.returncode}): {error.stderr.strip()}") from error
    return completed.stdout


def read_apt_packages() -> str:
    """The machine's package index, as `apt-cache dumpavail` prints it."""
    control_text = _run_apt(["apt-cache", "dumpavail"])
    if "Package:" not in control_text:
        raise CorpusError(f"`apt-cache dumpavail` listed no packages: the apt lists are empty; {APT_UPDATE_HINT}")
    return control_text


def read_apt_translations(lists_dir: Path = APT_LISTS_DIR) -> str:
    """The concatenated Translation-en lists that apt has downloaded (compressed on disk)."""
    files = sorted(str(path) for path in lists_dir.glob("*_i18n_Translation-en*") if path.is_file())
    if not files:
        raise CorpusError(f"no Translation-en lists in {lists_dir} (they hold the long descriptions); "
                          f"{APT_TRANSLATIONS_HINT}")
    # apt-helper decompresses whatever format apt stored (lz4, xz, gz).
    return "\n\n".join(_run_apt(["/usr/lib/apt/apt-helper", "cat-file", file]) for file in files)


# ---------------------------------------------------------------------------------- building corpora


def stratified_sample(rows: Sequence[dict[str, str]], max_rows: int, seed: int) -> list[dict[str, str]]:
    """At most `max_rows` rows keeping each label's share (largest-remainder rounding), seeded."""
    if max_rows >= len(rows):
        return list(rows)
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: row["id"]):
        by_label[row["label"]].append(row)
    exact_shares = {label: max_rows * len(items) / len(rows) for label, items in by_label.items()}
    quotas = {label: int(share) for label, share in exact_shares.items()}
    by_remainder = sorted(exact_shares, key=lambda label: (-(exact_shares[label] - quotas[label]), label))
    for label in by_remainder[: max_rows - sum(quotas.values())]:
        quotas[label] += 1
    generator = random.Random(seed)
    sample: list[dict[str, str]] = []
    for label in sorted(by_label):
        sample.extend(generator.sample(by_label[label], quotas[label]))
    return sample


def write_corpus(rows: Sequence[Mapping[str, Any]], out_path: str | Path) -> Counter[str]:
    """Write JSON lines sorted by id (atomically); returns the row count per label. A row's `day` (the demo
    day it is published on, see tasks.demo.site) is kept when it has one."""
    ordered = sorted(rows, key=lambda row: row["id"])
    lines = "".join(json.dumps({key: row[key] for key in ("id", "text", "label", "day") if key in row},
                               ensure_ascii=False) + "\n" for row in ordered)
    atomic_write_text(Path(out_path), lines)
    return Counter(row["label"] for row in ordered)


def extend_debian_corpus(out_path: str | Path, labels: Sequence[str], *, rows_per_day: int, first_day: int,
                         days: int, seed: int = 0, source_text: str | None = None) -> int:
    """Add `days` days of `rows_per_day` packages that the corpus does not hold yet, each tagged with the day
    it is published on (`first_day`, `first_day + 1`, ...). Rows already there keep their text and day, so
    a demo that goes on publishes new packages instead of spreading the old ones over more days. Returns the
    rows added: fewer than asked (maybe none) once the index has no unpublished packages left."""
    path = Path(out_path)
    existing = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.exists() else []
    known = {row["id"] for row in existing}
    wanted = set(labels)
    control_text = source_text if source_text is not None else read_apt_packages()
    unpublished = [row for row in parse_debian_packages(control_text) if row["label"] in wanted and row["id"] not in known]
    if not existing and not unpublished:
        raise CorpusError(f"no packages in section(s) {sorted(wanted)}; check the labels against `apt-cache dumpavail`")
    sample = stratified_sample(unpublished, rows_per_day * days, seed + first_day)
    random.Random(seed + first_day).shuffle(sample)  # the sample is grouped by label; every day gets the mix
    added = [{**row, "day": first_day + position // rows_per_day} for position, row in enumerate(sample)]
    write_corpus([*existing, *added], path)
    return len(added)


def build_debian_corpus(
    out_path: str | Path,
    labels: Sequence[str],
    max_rows: int | None = None,
    seed: int = 0,
    text: TextMode = "short",
    source_text: str | None = None,
    translations_text: str | None = None,
) -> Counter[str]:
    """Write the Debian corpus for `labels`; `source_text`/`translations_text` replace the apt calls."""
    control_text = source_text if source_text is not None else read_apt_packages()
    translations: dict[str, str] = {}
    if text == "long":
        # Only the machine's own index needs apt's translation lists; a given Packages text may carry
        # its long descriptions inline.
        if translations_text is None and source_text is None:
            translations_text = read_apt_translations()
        translations = parse_debian_translations(translations_text or "")
    wanted = set(labels)
    rows = [row for row in parse_debian_packages(control_text, text, translations) if row["label"] in wanted]
    missing = sorted(wanted - {row["label"] for row in rows})
    if missing:
        raise CorpusError(f"no packages in section(s) {missing}; check the labels against `apt-cache dumpavail`")
    if max_rows is not None:
        rows = stratified_sample(rows, max_rows, seed)
    return write_corpus(rows, out_path)


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.demo.corpus", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON-lines file to write")
    parser.add_argument("--labels", required=True, help="comma-separated Debian sections")
    parser.add_argument("--max-rows", type=int, default=None, help="stratified sample of at most N rows")
    parser.add_argument("--text", choices=("short", "long"), default="short")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(labels) < 2:
        parser.error(f"--labels needs at least two labels, got {labels}")
    try:
        counts = build_debian_corpus(args.out, labels, args.max_rows, args.seed, args.text)
    except CorpusError as error:
        print(f"freshet demo_corpus: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "rows": sum(counts.values()), "labels": dict(sorted(counts.items()))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
