"""Text encodings: bytes that are not UTF-8 are decoded by what tells their charset (a byte-order mark, a source's
`encoding`, a declared charset, a detection with a confidence bound), or quarantined with the reason; never mojibake.
Real bytes, through the real crawl of a local folder and of a local HTTP site."""

from __future__ import annotations

import codecs
import random
from pathlib import Path

import pytest

from tasks.config import ConfigError, load_config
from tasks.sources.charsets import UndecodableTextError, decode_text
from tests.test_sources import StaticSite, make_config, quarantined, run_crawl

LATIN_1_TEXT = "Bibliothèque Perl pour lire les fichiers INI, très utilisée"
WINDOWS_1252_TEXT = "Le café coûte 3 € – « très » cher… “vraiment”"
# Bytes no charset reads as text: every high byte, in order (charset-normalizer finds no candidate).
GARBAGE = bytes(range(128, 256)) * 2


@pytest.mark.parametrize(("body", "expected"), [
    (LATIN_1_TEXT.encode("latin-1"), LATIN_1_TEXT),
    ("Bibliothèque Perl très utilisée".encode("latin-1"), "Bibliothèque Perl très utilisée"),  # short: readings tie
    (WINDOWS_1252_TEXT.encode("cp1252"), WINDOWS_1252_TEXT),
    ("Größenänderung für Übersetzungen".encode("latin-1"), "Größenänderung für Übersetzungen"),
    ("Библиотека для анализа файлов очень популярна".encode("cp1251"), "Библиотека для анализа файлов очень популярна"),
    (codecs.BOM_UTF8 + LATIN_1_TEXT.encode(), LATIN_1_TEXT),
    (LATIN_1_TEXT.encode("utf-16"), LATIN_1_TEXT),  # with its byte-order mark
    (LATIN_1_TEXT.encode("utf-32"), LATIN_1_TEXT),
])
def test_legacy_and_marked_bytes_decode_exactly(body, expected):
    assert decode_text(body) == expected


def test_undecodable_bytes_raise_with_the_reason_instead_of_guessing():
    for body in (GARBAGE, bytes(random.Random(1).randrange(128, 256) for _ in range(300))):
        with pytest.raises(UndecodableTextError, match="not valid UTF-8 and no reliable charset"):
            decode_text(body)


def test_a_declared_charset_and_a_configured_encoding_are_followed():
    latin = LATIN_1_TEXT.encode("latin-1")
    assert decode_text(latin, "text/html; charset=ISO-8859-1") == LATIN_1_TEXT
    assert decode_text(b'<?xml version="1.0" encoding="ISO-8859-1"?><p>' + latin + b"</p>") == f"<?xml version=\"1.0\" " \
        f"encoding=\"ISO-8859-1\"?><p>{LATIN_1_TEXT}</p>"
    # Browsers read a declared ISO-8859-1 as windows-1252: curly quotes, not C1 control codes.
    assert decode_text(b"\x93quoted\x94", "text/plain; charset=iso-8859-1") == "\u201cquoted\u201d"
    assert decode_text("Привет".encode("cp1251"), encoding="cp1251") == "Привет"
    with pytest.raises(UndecodableTextError, match=r"not valid ascii \(the source's encoding setting\)"):
        decode_text(latin, encoding="ascii")


def write_folder(root: Path) -> None:
    files = {
        "perl/latin1.txt": LATIN_1_TEXT.encode("latin-1"),
        "perl/cp1252.txt": WINDOWS_1252_TEXT.encode("cp1252"),
        "perl/bom8.txt": codecs.BOM_UTF8 + "UTF-8 avec marque: déjà vu".encode(),
        "perl/bom16.txt": "UTF-16 avec marque: naïve".encode("utf-16"),
        "perl/garbage.txt": GARBAGE,
    }
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)


def test_a_local_folder_decodes_legacy_files_exactly_and_quarantines_garbage_with_its_reason(tmp_path, mlflow_uri):
    root = tmp_path / "data"
    write_folder(root)
    config = make_config(tmp_path, mlflow_uri, {"name": "files", "kind": "local", "path": str(root)})
    manifest, rows, report = run_crawl(config, "enc-1", None)
    assert {row["id"]: row["text"] for row in rows} == {
        "files:perl/latin1.txt": LATIN_1_TEXT, "files:perl/cp1252.txt": WINDOWS_1252_TEXT,
        "files:perl/bom8.txt": "UTF-8 avec marque: déjà vu", "files:perl/bom16.txt": "UTF-16 avec marque: naïve"}
    [bad] = quarantined(config, manifest)
    assert (bad["id"], bad["check"], bad["field"]) == ("files:perl/garbage.txt", "undecodable_text", "text")
    assert bad["reason"] == (f"{(root / 'perl' / 'garbage.txt').resolve().as_uri()}: not valid UTF-8 and no reliable "
                             f"charset: no charset reads these bytes as text")
    assert report["files"]["records_quarantined"] == 1


def test_a_configured_encoding_reads_every_file_of_the_source(tmp_path, mlflow_uri):
    root = tmp_path / "data"
    (root / "perl").mkdir(parents=True)
    (root / "perl" / "a.txt").write_bytes(LATIN_1_TEXT.encode("latin-1"))
    (root / "perl" / "b.csv").write_bytes("id,text,label\nb1,à la carte,perl\n".encode("latin-1"))
    (root / "perl" / "c.jsonl").write_bytes('{"id": "c1", "text": "crème brûlée", "label": "perl"}\n'.encode("latin-1"))
    source = {"name": "files", "kind": "local", "path": str(root), "encoding": "latin-1"}
    manifest, rows, _ = run_crawl(make_config(tmp_path, mlflow_uri, source), "enc-2", None)
    assert {row["id"]: row["text"] for row in rows} == {
        "files:perl/a.txt": LATIN_1_TEXT, "files:b1": "à la carte", "files:c1": "crème brûlée"}

    strict = {**source, "encoding": "ascii"}
    manifest, rows, _ = run_crawl(make_config(tmp_path / "strict", mlflow_uri, strict), "enc-3", None)
    assert rows == []
    assert {row["check"] for row in quarantined(make_config(tmp_path / "strict", mlflow_uri, strict), manifest)} == {
        "undecodable_text"}


def test_an_unknown_encoding_name_fails_at_config_load(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("labels: [perl]\ncrawl:\n  sources:\n    - {name: files, kind: local, path: data, "
                    "encoding: latin-9000}\n")
    with pytest.raises(ConfigError, match=r"encoding: Value error, unknown encoding 'latin-9000'"):
        load_config(path)


def test_http_pages_decode_by_declaration_mark_or_detection_and_garbage_is_quarantined(tmp_path, mlflow_uri):
    site = StaticSite()
    try:
        page = "<html><head>{head}<meta name=label content=alpha></head><body><article><p>{text}</p></article></body></html>"
        # The page's <meta http-equiv> is the only place its charset is stated (the header names none).
        head = '<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">'
        site.add("/p/meta.html", page.format(head=head, text=LATIN_1_TEXT).encode("latin-1"), "text/html")
        site.add("/p/bom16.html", page.format(head="", text="page en UTF-16: déjà vu").encode("utf-16"), "text/html")
        site.add("/p/detected.html", page.format(head="", text=WINDOWS_1252_TEXT).encode("cp1252"), "text/html")
        site.add("/p/garbage.html", b"<html><body><p>" + GARBAGE + b"</p></body></html>", "text/html")
        site.add("/sitemap.xml", "<?xml version='1.0'?><urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
                 + "".join(f"<url><loc>/p/{name}.html</loc></url>" for name in ("meta", "bom16", "detected", "garbage"))
                 + "</urlset>", "application/xml")
        source = {"name": "web", "kind": "html_site", "url": site.url, "allow_private_network": True,
                  "text": {"method": "selector", "selector": "article p"},
                  "label": {"selector": "meta[name=label]", "attribute": "content"}}
        config = make_config(tmp_path, mlflow_uri, source)
        manifest, rows, _ = run_crawl(config, "web-1")
        assert {row["id"].rsplit("/", 1)[1]: row["text"] for row in rows} == {
            "meta.html": LATIN_1_TEXT, "bom16.html": "page en UTF-16: déjà vu", "detected.html": WINDOWS_1252_TEXT}
        [bad] = quarantined(config, manifest)
        assert bad["check"] == "undecodable_text"
        assert bad["reason"] == f"{site.url}p/garbage.html: not valid UTF-8 and no reliable charset: no charset reads " \
                                f"these bytes as text"
        # Remembered: the unchanged page is not quarantined again by the next crawl.
        manifest, rows, _ = run_crawl(config, "web-2")
        assert rows == [] and quarantined(config, manifest) == []
    finally:
        site.close()
