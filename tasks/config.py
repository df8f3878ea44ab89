"""The pipeline configuration: declared once, typed, loaded from YAML with typed overrides.

Every step receives the whole `PipelineConfig`; its hash goes into every manifest and MLflow run.
Overrides use dotted paths (`train.epochs=2`); values are parsed as YAML scalars and the result is
validated again, so an override can never smuggle in a wrong type.
"""

from __future__ import annotations

import codecs
import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from tasks.models.families import (
    ModelSetupError,
    check_model_setting,
    is_explicit_path,
    is_relative_path,
    unresolved_model_message,
)


class ConfigError(ValueError):
    """A configuration file or override is malformed; the message names the file and field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SOURCE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


def _http_url(url: str, what: str = "source url") -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{what} must be http(s)://, got {url!r}")
    return url


def _valid_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"invalid regular expression {pattern!r}: {error}") from error
    return pattern


def _valid_selector(selector: str) -> str:
    from cssselect import GenericTranslator, SelectorError

    try:
        GenericTranslator().css_to_xpath(selector)
    except SelectorError as error:
        raise ValueError(f"invalid CSS selector {selector!r}: {error}") from error
    return selector


class _SourceBase(_Section):
    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    # Loopback/private addresses are refused unless a source opts in (the demo site runs on loopback).
    allow_private_network: bool = False


class _RecordFields(_Section):
    """Where id, text and label sit in a structured record (dotted paths reach into nested objects)."""

    id_field: str = "id"
    text_field: str = "text"
    label_field: str = "label"


class JsonlFeedSource(_SourceBase, _RecordFields):
    """An index of dated JSON-lines pages (`feed/index.json`; the demo site's default shape)."""

    kind: Literal["jsonl_feed"] = "jsonl_feed"
    url: str

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        return _http_url(url).rstrip("/") + "/"


class LabelRule(_Section):
    """Where a record's label comes from: a CSS selector (element text or `attribute`), or a regex on
    the URL; `regex` (first group, else the whole match) then narrows the value, `mapping` renames it."""

    selector: str | None = None
    attribute: str | None = None
    url_regex: str | None = None
    regex: str | None = None
    mapping: dict[str, str] = Field(default_factory=dict)

    @field_validator("url_regex", "regex")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        return None if pattern is None else _valid_regex(pattern)

    @field_validator("selector")
    @classmethod
    def _selector(cls, selector: str | None) -> str | None:
        return None if selector is None else _valid_selector(selector)

    @model_validator(mode="after")
    def _one_origin(self) -> LabelRule:
        if (self.selector is None) == (self.url_regex is None):
            raise ValueError("a label rule needs exactly one of selector or url_regex")
        return self


class HtmlTextRule(_Section):
    """Main text: trafilatura's extraction, falling back to `selector`; or the selector alone."""

    method: Literal["trafilatura", "selector"] = "trafilatura"
    selector: str | None = "body"

    @model_validator(mode="after")
    def _selector_needed(self) -> HtmlTextRule:
        if self.method == "selector" and not self.selector:
            raise ValueError("text.method 'selector' needs text.selector")
        if self.selector is not None:
            _valid_selector(self.selector)
        return self


class HtmlSiteSource(_SourceBase):
    """HTML pages found through sitemaps (and sitemap indexes) and by following links."""

    kind: Literal["html_site"]
    url: str
    # Relative to `url`; robots.txt `Sitemap:` lines are added. Empty (and no robots lines) = none.
    sitemaps: list[str] = Field(default_factory=lambda: ["sitemap.xml"])
    # Pages to start link-following from, relative to `url` (sitemap pages are seeds too).
    start_urls: list[str] = Field(default_factory=list)
    follow_links: bool = True
    max_depth: int = Field(2, ge=0, description="link hops from a seed page")
    max_pages: int = Field(1000, ge=1, description="pages requested per crawl")
    # Hosts pages may be on; empty = the host of `url`.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Regexes searched in the URL path: a page must match one of `allow_paths` (if any) and none of `deny_paths`.
    allow_paths: list[str] = Field(default_factory=list)
    deny_paths: list[str] = Field(default_factory=list)
    # Pages whose path matches one of these are records; others are only followed. Empty = every page.
    record_paths: list[str] = Field(default_factory=list)
    text: HtmlTextRule = HtmlTextRule()
    label: LabelRule

    @field_validator("url")
    @classmethod
    def _base_url(cls, url: str) -> str:
        return _http_url(url)

    @field_validator("allow_paths", "deny_paths", "record_paths")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        return [_valid_regex(pattern) for pattern in patterns]


class FeedSource(_SourceBase):
    """An RSS or Atom feed (feedparser); `{date}` in the URL becomes the logical date (YYYY-MM-DD)."""

    kind: Literal["feed"]
    url: str
    text: Literal["title", "summary", "title_summary"] = "title_summary"
    # The label: the entry's first category (narrowed by `label_regex`), or a regex on the entry link.
    label_from: Literal["category", "link"] = "category"
    label_regex: str | None = None

    @field_validator("url")
    @classmethod
    def _feed_url(cls, url: str) -> str:
        return _http_url(url)

    @field_validator("label_regex")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        return None if pattern is None else _valid_regex(pattern)

    @model_validator(mode="after")
    def _link_needs_regex(self) -> FeedSource:
        if self.label_from == "link" and self.label_regex is None:
            raise ValueError("label_from 'link' needs label_regex")
        return self


class JsonApiSource(_SourceBase, _RecordFields):
    """A paginated JSON API (records at `records_path`) or JSON-lines pages; `{date}` as for feeds."""

    kind: Literal["json_api"]
    url: str
    format: Literal["json", "jsonl"] = "json"
    records_path: str = Field("", description="dotted path to the record list; empty = the document itself")
    # next_link: follow `next_path` in the body (or an HTTP Link rel=next); page/offset: a query parameter.
    pagination: Literal["none", "next_link", "page", "offset"] = "none"
    next_path: str = "next"
    page_param: str = "page"
    first_page: int = Field(1, ge=0)
    offset_param: str = "offset"
    limit_param: str | None = "limit"
    page_size: int = Field(100, ge=1)
    max_pages: int = Field(100, ge=1)

    @field_validator("url")
    @classmethod
    def _api_url(cls, url: str) -> str:
        return _http_url(url)


class LocalSource(_SourceBase, _RecordFields):
    """Local files: a file or a folder searched with `glob`; CSV, JSON lines, Parquet or plain text.

    Text files become one record each: id = path relative to `path`, label = the parent folder's name.
    """

    kind: Literal["local"]
    path: str
    glob: str = "**/*"
    format: Literal["auto", "csv", "jsonl", "parquet", "text"] = "auto"
    # The text files' charset. "auto": a byte-order mark, else UTF-8, else a reliable detection (Western
    # European single-byte text reads as windows-1252); a file none of these can read is quarantined with the
    # reason, never decoded into wrong characters. A codec name (latin-1, cp1251, shift_jis, ...) is used as is.
    encoding: str = "auto"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        if encoding != "auto":
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValueError(f"unknown encoding {encoding!r}: use \"auto\" or a Python codec name "
                                 f"(utf-8, latin-1, cp1252, ...)") from None
        return encoding

    @property
    def url(self) -> str:
        return Path(self.path).expanduser().resolve().as_uri()


class DebianIndexSource(_SourceBase):
    """A Debian `Packages` index (plain, .gz or .xz) over HTTP (`url`, `{date}` as for feeds) or from `path`.

    id = Package=Version, text = the Description synopsis (`short`) or the long description, label = Section.
    """

    kind: Literal["debian_index"]
    url: str | None = None
    path: str | None = None
    text: Literal["short", "long"] = "short"

    @field_validator("url")
    @classmethod
    def _index_url(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url)

    @model_validator(mode="after")
    def _one_location(self) -> DebianIndexSource:
        if (self.url is None) == (self.path is None):
            raise ValueError("a debian_index source needs exactly one of url or path")
        return self

    @property
    def location(self) -> str:
        return self.url if self.url is not None else Path(str(self.path)).expanduser().resolve().as_uri()


class LabelStudioConnection(_Section):
    """Where a Label Studio project is: the server, the environment variable holding the API token (never
    the token itself), the project's title (the label step creates or updates it; the source reads it)."""

    url: str = Field(description="the server's base URL, e.g. http://127.0.0.1:8089")
    token_env: str = Field("LABEL_STUDIO_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="environment variable with the API token (Authorization: Token ...)")
    project: str = Field("freshet", min_length=1, max_length=50, description="the project's title")
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _server_url(cls, url: str) -> str:
        return _http_url(url, "label studio url").rstrip("/")


class LabelStudioSource(_SourceBase):
    """Finished annotations of a Label Studio project (`url` + `token_env` + `project`), or of a Label Studio
    JSON export file (`path`): only tasks annotated or edited since the last crawl; id = the task's.

    Cancelled annotations are skipped; several annotations of a task resolve to the ground-truth one, else
    the majority, else the task is quarantined as a conflict (tasks/sources/label_studio.py)."""

    kind: Literal["label_studio"]
    url: str | None = None
    path: str | None = None
    token_env: str = Field("LABEL_STUDIO_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    project: str = Field("freshet", min_length=1, max_length=50)
    timeout_s: float = Field(30.0, gt=0)
    text_field: str = Field("text", description="the task data key holding the text")
    page_size: int = Field(100, ge=1, le=1000, description="tasks per API page")

    @field_validator("url")
    @classmethod
    def _server_url(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url, "label studio url").rstrip("/")

    @model_validator(mode="after")
    def _one_location(self) -> LabelStudioSource:
        if (self.url is None) == (self.path is None):
            raise ValueError("a label_studio source needs exactly one of url (a server) or path (an export file)")
        return self

    @property
    def location(self) -> str:
        if self.url is not None:
            return f"{self.url}/projects?title={self.project}"
        return Path(str(self.path)).expanduser().resolve().as_uri()

    def connection(self) -> LabelStudioConnection:
        return LabelStudioConnection(url=str(self.url), token_env=self.token_env, project=self.project,
                                     timeout_s=self.timeout_s)


def _source_kind(value: Any) -> str:
    # Configs written before source kinds existed have no `kind`: they are jsonl_feed sources.
    if isinstance(value, dict):
        return value.get("kind", "jsonl_feed")
    return getattr(value, "kind", "jsonl_feed")


SourceConfig = Annotated[
    Annotated[JsonlFeedSource, Tag("jsonl_feed")]
    | Annotated[HtmlSiteSource, Tag("html_site")]
    | Annotated[FeedSource, Tag("feed")]
    | Annotated[JsonApiSource, Tag("json_api")]
    | Annotated[LocalSource, Tag("local")]
    | Annotated[DebianIndexSource, Tag("debian_index")]
    | Annotated[LabelStudioSource, Tag("label_studio")],
    Discriminator(_source_kind),
]


class CrawlConfig(_Section):
    sources: list[SourceConfig] = Field(min_length=1)
    user_agent: str = "freshet-crawler/0.1 (+https://github.com/freshet-ml/freshet)"
    # Per read and per connect; a whole response is bounded by response_deadline_s.
    timeout_s: float = Field(10.0, gt=0)
    # One response (connect, headers and body) is abandoned past this, however steadily it trickles in.
    response_deadline_s: float = Field(30.0, gt=0)
    # Once a body has streamed for min_rate_grace_s, it is abandoned when its average rate falls below this (0 = off).
    min_bytes_per_s: float = Field(256.0, ge=0)
    min_rate_grace_s: float = Field(5.0, ge=0, description="seconds of body before min_bytes_per_s applies")
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    min_interval_s: float = Field(0.0, ge=0, description="per-host delay between requests")
    max_response_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # Compressed indexes (.gz/.xz) are refused once they inflate past this (compression bombs).
    max_decompressed_bytes: int = Field(512 * 1024 * 1024, gt=0)
    max_redirects: int = Field(5, ge=0)
    progress_every_s: float = Field(10.0, gt=0, description="progress log line interval")
    # A page that still fails after its retries is skipped and kept pending; the source fails only when
    # more than this share of the pages it tried failed.
    max_failed_page_fraction: float = Field(0.5, ge=0, le=1)
    # A pending page waits this long before a later crawl retries it, doubling with each failed crawl (up to 7 days).
    failed_page_backoff_s: float = Field(3600.0, ge=0)
    # Progress within a run is saved every this many pages or seconds, whichever comes first, so a retry resumes.
    checkpoint_every_pages: int = Field(50, ge=1)
    checkpoint_every_s: float = Field(30.0, gt=0, description="see checkpoint_every_pages")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Any]) -> list[Any]:
        names = [source.name for source in sources]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"source names must be unique (they key the crawl state), repeated: {duplicated}")
        return sources


class ValidateConfig(_Section):
    min_text_chars: int = Field(3, ge=1)
    max_text_chars: int = Field(5000, ge=1)
    # Batch-level bound: above this fraction of quarantined rows the step fails instead of passing
    # a mostly-bad batch downstream.
    max_quarantine_fraction: float = Field(0.2, ge=0, le=1)
    min_rows: int = Field(1, ge=0)
    # Row-level: share of printable characters (letters, marks, numbers, punctuation, symbols, spaces)
    # below which a text is binary garbage or mojibake.
    min_printable_ratio: float = Field(0.9, ge=0, le=1)
    # A label outside `labels`: quarantine its rows, reject the batch (a new class needs a decision), or
    # extend: the label joins the label set from that day on, and the next round grows the champion's head.
    new_labels: Literal["quarantine", "reject", "extend"] = "quarantine"
    # Batch-level: fraction of rows whose text repeats an earlier row's text (a re-crawl or a loop).
    max_duplicate_fraction: float = Field(0.2, ge=0, le=1)
    # Batch-level drift against accepted history (population stability index; 0.25 = major shift).
    max_label_psi: float = Field(0.25, ge=0)
    max_length_psi: float = Field(0.25, ge=0)
    # Below this many valid rows PSI is mostly sampling noise: the drift checks are skipped (reported).
    drift_min_rows: int = Field(200, ge=1)
    # Cap on history rows read for the reference profile (most recent snapshots first).
    drift_reference_max_rows: int = Field(20_000, ge=1)
    drift_length_bins: int = Field(10, ge=2)


class CleanConfig(_Section):
    strip_markup: bool = True
    unicode_form: Literal["NFC", "NFKC"] = "NFKC"
    lowercase: bool = False
    # Near-duplicates (MinHash LSH candidates, confirmed by exact Jaccard of shingle sets); null = off.
    near_duplicate_threshold: float | None = Field(0.85, gt=0, le=1)
    # Train rows this similar to any validation/test row (batch or history) are removed (leakage);
    # lower than the de-duplication threshold, since a paraphrase in train already inflates test scores.
    leakage_threshold: float | None = Field(0.7, gt=0, le=1)
    shingles: Literal["char5", "word3"] = "char5"
    num_perm: int = Field(64, ge=16, le=512)
    # Replace e-mail addresses, phone numbers and IP addresses with placeholders (<EMAIL>, ...).
    scrub_pii: bool = False


class SplitConfig(_Section):
    """Splits by a stable hash of the record id, so a record never changes split between runs."""

    validation_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    salt: str = "freshet"

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be < 1")
        return self


class ModelAugmenterConfig(BaseModel):
    """A model-based augmenter (back-translation, paraphrase) by registered name; its other keys are its own
    options (e.g. local model directories), checked by the augmenter."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)


class PseudoLabelConfig(_Section):
    """Self-training: confident, class-balanced pseudo-labels on unlabelled texts the loop has seen
    (tasks/training/pseudo_labels.py); tagged like augmentation, never evaluated on."""

    min_confidence: float = Field(0.9, ge=0, le=1, description="the served model's probability of its label")
    max_share: float = Field(0.5, ge=0, le=1, description="pseudo-labelled rows per real train row, at most")
    window_days: int = Field(7, ge=1, description="days of the prediction log, up to the run's day, read for texts")


class AugmentConfig(_Section):
    seed: int = 0
    # EDA operations that need no lexicon: random swap and random deletion of words.
    swap_probability: float = Field(0.1, ge=0, le=1)
    delete_probability: float = Field(0.1, ge=0, le=1)
    # EDA operations that need a lexicon: replace words by synonyms / insert a synonym of a word.
    synonym_probability: float = Field(0.0, ge=0, le=1)
    insert_probability: float = Field(0.0, ge=0, le=1)
    # "wordnet": WordNet 3.0 database files (Debian `wordnet-base`); a missing path fails the step.
    lexicon: Literal["none", "wordnet"] = "none"
    wordnet_path: str = "/usr/share/wordnet"
    wordnet_max_senses: int | None = Field(2, ge=1, description="most frequent senses per part of speech")
    # A registered model-based augmenter ({name: ..., its options}); null = none.
    model_based: ModelAugmenterConfig | None = None
    augmentations_per_row: int = Field(1, ge=0)
    # Class balancing: minority classes are topped up with augmented rows toward this share of
    # the largest class (1.0 = fully balanced, 0 = off).
    balance_to_fraction_of_largest: float = Field(0.5, ge=0, le=1)
    max_augmented_fraction: float = Field(0.5, ge=0, le=1, description="cap vs. real rows")

    @model_validator(mode="after")
    def _lexicon_for_synonyms(self) -> AugmentConfig:
        if self.lexicon == "none" and (self.synonym_probability > 0 or self.insert_probability > 0):
            raise ValueError("synonym_probability / insert_probability > 0 need a lexicon: set augment.lexicon=wordnet")
        return self


class TinyModelConfig(_Section):
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64


class PeftConfig(_Section):
    """Parameter-efficient fine-tuning: LoRA adapters on the attention projections; the base is frozen.

    The adapters are merged into the weights before saving, so the model stays a plain HF directory.
    """

    method: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="scale: the update is alpha / r * B @ A")
    dropout: float = Field(0.05, ge=0, lt=1)
    # None: the family's query and value projections (BERT/MiniLM/RoBERTa/ELECTRA query+value, DistilBERT
    # q_lin+v_lin, DeBERTa-v2 query_proj+value_proj, ModernBERT Wqkv; tasks/models/families.py). The whole
    # classification head (every module outside the encoder) always trains in full (peft's modules_to_save).
    target_modules: list[str] | None = Field(None, min_length=1)


class TrainConfig(_Section):
    # Which encoder: minilm (bundled, offline), tiny (a random BERT, for tests), a local Hugging Face model directory
    # (config.json, weights, tokenizer), or a hub id (org/name; pin `revision`). Checked when loaded and when
    # training starts (tasks/models/families.py).
    model: str = Field("minilm", min_length=1)
    revision: str | None = Field(None, description="hub ids only: the commit, tag or branch to pin")
    # Models that ship their own Python code (config auto_map) run it only when this says so.
    trust_remote_code: bool = False
    tiny: TinyModelConfig = TinyModelConfig()
    max_length: int = Field(64, ge=8)
    batch_size: int = Field(32, ge=1, description="per process")
    # The epoch cap: the trainer validates after every epoch, keeps the best weights and stops after
    # `early_stopping_patience` epochs without a validation gain (HF Trainer's load_best_model_at_end +
    # EarlyStoppingCallback), so on small data the epochs come from the validation split, not this number.
    epochs: float = Field(6.0, gt=0)
    # Small data wants larger steps than BERT's 2e-5..5e-5: measured on 500-2,000 labelled synopses with
    # MiniLM-L6 (bench/label_efficiency.py), 1e-4 with 10% warmup and early stopping beats 5e-5 for 3 epochs.
    learning_rate: float = Field(1e-4, gt=0)
    # A warm-started round refines a trained champion: a smaller step forgets less of what it knew.
    # None = learning_rate.
    warm_start_learning_rate: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    max_train_rows: int | None = Field(None, ge=1, description="bounded sample of new rows")
    max_validation_rows: int = Field(2000, ge=1)
    replay_fraction: float = Field(0.5, ge=0, description="old rows per new row (replay)")
    warm_start: bool = True
    gradient_accumulation_steps: int = Field(1, ge=1)
    # SGD makes DDP-vs-single-process equivalence checkable at float tolerance (Adam amplifies the
    # float noise of parameters whose true gradient is zero); AdamW is the default for quality.
    optimizer: Literal["adamw", "sgd"] = "adamw"
    dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout (0 = deterministic)")
    # "auto": bf16 autocast where bf16 is native (GPU; CPUs with AVX512-BF16 or AMX, where it converges like
    # fp32 and trains ~1.4x faster), fp32 elsewhere (emulated bf16 is ~20x slower; bf16 there warns). The
    # choice and its reason are in the train manifest (facts.precision) and MLflow (tasks/training/precision.py).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile the model (dynamic shapes: bucketed batches vary in length); pays off on long runs.
    compile: bool = False
    # On CPU, eager: dropout masks from numpy's PCG64 (tasks/training/cpu_dropout.py), ~3x faster than torch's
    # generator, same Bernoulli(1 - p); false = torch's own dropout.
    fast_cpu_dropout: bool = True
    # On CPU, one process: the word-embedding gradient zeroed, clipped and scaled only on the rows a
    # step touched (tasks/training/embedding_rows.py); AdamW still updates every row. false = autograd's dense one.
    row_sparse_embedding_grad: bool = True
    # A recipe, not a speed-up of the same training: the 30522 x 384 word-embedding matrix (about half
    # of MiniLM's weights) stays as pretrained, so AdamW updates and stores state for half as much.
    freeze_word_embeddings: bool = False
    peft: PeftConfig | None = None
    log_every_steps: int = Field(10, ge=1, description="rank 0 progress line (step/total, loss, samples/s)")
    early_stopping_patience: int = Field(2, ge=1, description="epochs without validation gain")
    # Cross-entropy weighted by inverse class frequency in the round's train rows (rare classes count more):
    # +2.6 and +2.1 points macro-F1 at 500 and 1,000 labelled synopses (bench/label_efficiency.py, 2 seeds).
    class_balanced_loss: bool = True
    # Self-training on the texts the champion scored (the prediction log): a second fit with its confident,
    # class-balanced pseudo-labels, kept only when the validation split scores it higher. Off: +0.5-0.6 points
    # macro-F1 at 250-2,000 labels for 2.2x the CPU (docs/benchmarks.md).
    self_training: PseudoLabelConfig | None = None
    checkpoint_every_steps: int = Field(50, ge=1)
    seed: int = 0
    # DDP launch: "auto" = the GPUs present, else cpu_processes.
    nproc_per_node: int | Literal["auto"] = "auto"
    cpu_processes: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = None
    max_restarts: int = Field(0, ge=0)
    # runner.mode=kubernetes with nnodes > 1: a Kubeflow PyTorchJob; elastic between these node counts
    # (None = exactly nnodes).
    min_nnodes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _patience_within_cap(self) -> TrainConfig:
        # Only a patience the config sets: the default with a short cap (epochs: 1) just never stops early.
        if "early_stopping_patience" in self.model_fields_set and self.early_stopping_patience > self.epochs:
            raise ValueError(f"early_stopping_patience ({self.early_stopping_patience}) must be at most the epoch cap "
                             f"epochs ({self.epochs:g}): early stopping could never act")
        return self

    @model_validator(mode="after")
    def _node_range(self) -> TrainConfig:
        if self.min_nnodes is not None and self.min_nnodes > self.nnodes:
            raise ValueError(f"min_nnodes ({self.min_nnodes}) must be <= nnodes ({self.nnodes})")
        return self


class GatePolicy(_Section):
    """Declarative gate: absolute floors, non-inferiority vs the champion, compressed-model drop.

    Optional bounds (None) are reported but never fail the gate.
    """

    floors: dict[str, float] = Field(default_factory=lambda: {"frozen.macro_f1": 0.3})
    primary_metric: str = "macro_f1"
    # Candidate may be at most this much worse than the champion on every slice both were scored on;
    # judged on the lower bound of a paired bootstrap interval of (candidate - champion).
    non_inferiority_margin: float = Field(0.02, ge=0)
    # Slices with fewer rows are reported but not compared (a 35-row slice has a ±0.15 interval).
    min_comparison_rows: int = Field(100, ge=1)
    bootstrap_resamples: int = Field(1000, ge=100)
    confidence_level: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_seed: int = 0
    # Largest allowed per-class F1 loss vs the champion; classes with fewer test rows than
    # `min_class_support` in a slice are too noisy to judge and are left out.
    max_class_f1_drop: float | None = Field(0.10, ge=0)
    min_class_support: int = Field(20, ge=1)
    # Forgetting: champion minus candidate primary metric on the `old` slice.
    max_forgetting: float | None = Field(0.02, ge=0)
    # Forgetting that compounds: small steps each within `max_forgetting` can add up over many
    # promotions. The candidate's primary metric on the `frozen` slice (the same rows every run) may be at
    # most this far below the best any champion has scored there (None: not checked).
    max_drop_below_best: float | None = Field(None, ge=0)
    max_latency_ms_batch1_p95: float | None = Field(None, gt=0)
    max_ece: float | None = Field(None, ge=0, le=1)
    max_compressed_drop: float = Field(0.03, ge=0)
    # The candidate (what would be served) against the lexical baseline fitted on the same train rows, per
    # slice, judged like non-inferiority: the lower bound of the paired bootstrap interval of
    # (candidate - baseline) must reach this gain minus `non_inferiority_margin`. None: reported, not judged.
    min_gain_over_baseline: float | None = Field(0.0, ge=-1, le=1)
    # A class the champion never had (validate.new_labels: extend) is judged on its own test rows: the
    # candidate's F1 on them, where a slice holds at least `min_class_support` of them. None: reported only.
    min_new_class_f1: float | None = Field(0.5, ge=0, le=1)


class BaselineConfig(_Section):
    """The lexical baseline every round fits on the candidate's own train rows (tasks/models/lexical.py)."""

    ngram_max: int = Field(2, ge=1, le=3, description="word n-grams from 1 to this many words")
    min_df: int = Field(1, ge=1, description="n-grams in fewer train rows are dropped")
    lowercase: bool = True
    c: float = Field(10.0, gt=0, description="inverse L2 strength of the logistic regression")
    max_iter: int = Field(1000, ge=10)


class EvaluateConfig(_Section):
    batch_size: int = Field(64, ge=1)
    calibration_bins: int = Field(15, ge=2)
    gate: GatePolicy = GatePolicy()
    # null: no baseline (the gate's baseline check is skipped, and nothing is blended).
    baseline: BaselineConfig | None = BaselineConfig()
    # Serve the transformer and the baseline blended, p = w * transformer + (1 - w) * baseline, with the weight
    # w in [0, 1] that minimises the log-loss on the trainer's validation rows (w = 1: the transformer alone).
    # false: the transformer alone is served and gated.
    blend: bool = True
    blend_grid: int = Field(21, ge=2, description="weights tried, evenly spaced from 0 to 1")


CompressionVariant = Literal["int8-dynamic", "onnx-fp32", "onnx-int8", "pruned", "distilled", "distilled-onnx-int8"]


class CompressConfig(_Section):
    # Evaluated variants; the policy serves the smallest (then fastest) one within
    # `gate.max_compressed_drop` on every slice. `pruned` is measured only (dense storage, not served).
    variants: list[CompressionVariant] = Field(default_factory=lambda: list(get_args(CompressionVariant)))
    onnx_opset: int = Field(17, ge=13)
    prune_amount: float = Field(0.3, gt=0, lt=1, description="fraction of Linear weights zeroed (global magnitude)")
    latency_sample_rows: int = Field(64, ge=1)
    latency_rounds: int = Field(3, ge=1, description="interleaved timing blocks per variant; medians reported")
    # Distillation (`distilled`, `distilled-onnx-int8`): a shallower student initialised from the teacher's
    # layers, trained on the teacher's logits (KL at temperature T, weight alpha) plus CE on the labels,
    # over the train split of this and earlier snapshots (test rows are never used).
    distill_layers: int | None = Field(None, ge=1, description="student encoder layers (spread evenly over the "
                                       "teacher's); default half the teacher's, MiniLM-L6 -> 3")
    distill_hidden_size: int | None = Field(None, ge=8, description="smaller width: random init, no weight copy")
    distill_epochs: int = Field(3, ge=1)
    distill_temperature: float = Field(2.0, gt=0)
    distill_alpha: float = Field(0.5, ge=0, le=1, description="weight of the KL term; 1 - alpha goes to the CE")
    distill_learning_rate: float = Field(1e-4, gt=0)
    distill_batch_size: int = Field(32, ge=1)
    distill_max_rows: int = Field(20000, ge=1, description="seeded sample of train rows the student sees")
    # Serving check at register: the registered pyfunc, loaded in a fresh process, must reproduce the
    # compress step's predictions of the serving variant on this many fixed test rows.
    serving_check_rows: int = Field(32, ge=0, description="0 turns the check off")
    serving_check_tolerance: float = Field(1e-3, gt=0, description="max absolute probability difference")


class MlflowConfig(_Section):
    tracking_uri: str
    experiment: str = "freshet"
    # Unset in a pipeline config: the pipeline's `name` (PipelineConfig fills it in), so two pipelines on one
    # registry never share a registered model by accident.
    model_name: str = Field("freshet", description="the registered model; default: the pipeline's `name`")
    # Unset: MLflow's default for a server or file store; for a database URI `mlartifacts` beside the SQLite file
    # (or under artifact_root), never `./mlruns` in whatever directory a step runs (tasks/tracking.py).
    artifact_location: str | None = None


class RunnerConfig(_Section):
    """How the DAG runs each step: in the worker, in our image via Docker, or as a Kubernetes pod."""

    mode: Literal["local", "docker", "kubernetes"] = "local"
    image: str = "freshet:latest"
    # Where this pipeline's config file is inside the image (docker / kubernetes modes).
    container_config_path: str = "/opt/freshet/configs/pipeline.yaml"
    docker_url: str = "unix://var/run/docker.sock"
    network_mode: str | None = None
    namespace: str = "freshet"
    # Environment passed into every step (e.g. MLFLOW_TRACKING_URI on a shared server).
    env: dict[str, str] = Field(default_factory=dict)
    gpus: int = Field(0, ge=0)
    # Celery queue for the training task (e.g. "gpu", served by the compose GPU worker).
    train_queue: str | None = None
    # Executor for the training task when Airflow runs several (e.g. `LocalExecutor,CeleryExecutor`:
    # train on a Celery worker, everything else in the scheduler's LocalExecutor). None: the default.
    train_executor: str | None = None


class ScheduleConfig(_Section):
    """When the pipeline DAG runs, and when a run goes on to train (the rest only ingests data).

    Runs start daily (`cron`) and, with `watch_source`, whenever the `freshet_watch` DAG sees a new
    page at a source (an Airflow Asset event). A run trains when at least `min_new_rows` cleaned rows
    arrived since the last run that trained, or when validation measured drift at or above
    `retrain_on_psi`, or when there is no champion yet; otherwise it ends after `augment`.
    """

    cron: str = "@daily"
    start_date: dt.date = dt.date(2026, 11, 1)
    # Off by default: turning a new pipeline on should not start a month of runs; backfill instead.
    catchup: bool = False
    max_active_runs: int = Field(1, ge=1)
    watch_source: bool = True
    watch_cron: str = "@hourly"
    # 50: a 10-file day of 3 labels gives ~8 train rows and ~1 test row, too few to learn from or to gate on;
    # such days add up (counted since the last training) and train about weekly. No round ever starts
    # without a train-split row per training process (tasks/decide.py). The demo sets 200.
    min_new_rows: int = Field(50, ge=0)
    # Below validate.max_label_psi / max_length_psi (which reject the batch), above noise: worth retraining.
    retrain_on_psi: float | None = Field(0.1, gt=0)
    # An Airflow pool that serialises training (one GPU job at a time). It must exist (`airflow pools
    # set NAME SLOTS DESC`; `freshet demo` creates it): the scheduler leaves tasks of a missing pool queued.
    training_pool: str | None = None
    training_pool_slots: int = Field(1, ge=1)
    # Transient steps (crawl, register, promote: network calls) retry with exponential backoff;
    # deterministic steps never retry (the same inputs fail the same way).
    retries: int = Field(3, ge=0)
    retry_delay_s: float = Field(30.0, gt=0)
    max_retry_delay_s: float = Field(600.0, gt=0)
    train_retries: int = Field(1, ge=0, description="a lost worker resumes from the last checkpoint")


class NotifyConfig(_Section):
    """Webhook notifications (JSON POST) on task failure and on gate rejection; no URL = off."""

    webhook_url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0)
    on_failure: bool = True
    on_gate_rejection: bool = True

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url, "notify.webhook_url")


class ApprovalConfig(_Section):
    """Human approval (Airflow HITL) between the gate and promotion; off by default and in the demo."""

    required: bool = False
    response_timeout_hours: float | None = Field(24.0, gt=0, description="then the default option applies")
    default: Literal["Approve", "Reject"] = "Reject"
    assigned_users: list[str] = Field(default_factory=list, description="user ids allowed to respond; empty = any")


class PredictionLogConfig(_Section):
    """What `freshet serve` appends per prediction to `<artifact_root>/predictions/date=YYYY-MM-DD/part-*.parquet`.

    Rows are buffered and written in batches (every `flush_every_rows` rows or `flush_every_s` seconds,
    whichever comes first) and on shutdown: a request is answered only once its rows are in the buffer
    the shutdown flush writes.
    """

    enabled: bool = True
    sample_fraction: float = Field(1.0, ge=0, le=1, description="share of requests logged (all their texts)")
    # "text": the text itself; "hash": only its sha256 (the `text_sha256` column is written either way).
    store_text: Literal["text", "hash"] = "text"
    # With store_text "text": e-mail addresses, phone numbers and IP addresses become placeholders first
    # (the scrubber of clean.scrub_pii).
    scrub_pii: bool = False
    flush_every_rows: int = Field(1000, ge=1)
    flush_every_s: float = Field(10.0, gt=0)
    # Rows held while the artifact store cannot be written; beyond this, new rows are dropped and counted
    # (freshet_serve_prediction_log_dropped_rows_total) rather than exhausting memory.
    max_pending_rows: int = Field(200_000, ge=1)


class ServeConfig(_Section):
    """`freshet serve`: the HTTP server that follows `models:/<model_name>@<alias>`.

    A new version the alias points at is loaded and checked in the background, then swapped in
    atomically; one that fails either is refused and the old one keeps serving. Concurrent requests are
    gathered for at most `max_batch_wait_ms` into one model call of at most `max_batch_texts` texts.
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 = any free port (printed at start)")
    alias: str = "champion"
    poll_interval_s: float = Field(10.0, gt=0, description="how often the alias is resolved in the registry")
    max_batch_texts: int = Field(64, ge=1, description="texts per model call")
    # How long the first request of a batch waits for others still being read; 0 = never wait (a batch
    # is then whatever queued up while the model was busy).
    max_batch_wait_ms: float = Field(2.0, ge=0)
    max_request_texts: int = Field(256, ge=1, description="texts per request; more is a 413")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="request body limit; more is a 413")
    request_timeout_s: float = Field(10.0, gt=0, description="reading, queueing and predicting one request; then a 504")
    # Threads per model call (onnxruntime intra-op, torch); null = $FRESHET_THREADS_PER_RANK, else the cores this
    # process may use less one, which stays free for the HTTP event loop.
    model_threads: int | None = Field(None, ge=1)
    # Bearer-token auth on /predict and /invocations: the token is read from this environment variable
    # (never from the file); auth is on whenever it is set and non-empty.
    auth_token_env: str = "FRESHET_SERVE_TOKEN"
    require_auth: bool = Field(False, description="refuse to start when the token variable is empty")
    # MLflow registry webhook (POST /webhooks/mlflow): the HMAC secret given to `create_webhook`, read from
    # this variable. Unset: the webhook needs the bearer token when auth is on, and is open otherwise
    # (it only makes the server resolve the alias now; the payload is never trusted).
    webhook_secret_env: str = "FRESHET_SERVE_WEBHOOK_SECRET"
    prediction_log: PredictionLogConfig = PredictionLogConfig()


class ScoreConfig(_Section):
    """Batch scoring (`freshet_score` DAG, `python -m tasks.score`): an unlabelled drop folder scored by the
    champion, and by the challenger in shadow when it is another version.

    `input` is an fsspec glob (a local path, s3://, gs://) of JSONL, CSV or Parquet files with a text column;
    `{date}` in it is the logical date (YYYY-MM-DD). Scores go to `runs/<run_id>/score/predictions.parquet`
    (every class's probability, the version, the shadow's label and confidence) and to MLflow as a dataset
    tagged with the version; the champion's rows are also filed in the prediction log the monitor reads.
    """

    input: str | None = Field(None, description="glob of files to score; {date} = the logical date; null = off")
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field("auto", description="auto: by suffix")
    id_field: str = "id"
    text_field: str = "text"
    # The freshet_score DAG's schedule; null: triggered only (by hand, or the REST API when a drop lands).
    cron: str | None = "@daily"
    shadow: bool = Field(True, description="also score with the challenger when it is not the champion")
    store_text: bool = Field(True, description="false: predictions.parquet keeps only each text's sha256")
    log_predictions: bool = Field(True, description="file the champion's rows in the prediction log")
    batch_size: int = Field(64, ge=1)
    max_rows: int | None = Field(None, ge=1, description="score at most this many rows (the first, by file)")


class MonitorConfig(_Section):
    """Production monitoring (`freshet_monitor` DAG, `python -m tasks.monitor`): recent predictions (the
    prediction log: served and batch-scored rows) against the serving version's reference, its predictions
    on its own test slices.

    Per version with at least `min_rows` rows in the window: PSI of the predicted-label distribution, of the
    confidence and of the text length, the rise of the out-of-vocabulary word share (against the version's
    training texts), a label-free macro-F1 estimate from calibrated confidence (CBPE-style) and, once
    labelled feedback for the texts arrives, the real macro-F1. A check beyond its bound is a breach; a
    breach is emitted (state/monitor/breach.json and the production-drift Asset event, which starts the
    pipeline) unless one was emitted within `cooldown_hours`, and the next `decide` trains on it.
    """

    cron: str = "@daily"
    window_days: int = Field(1, ge=1, description="days of the prediction log each run reads, up to its day")
    min_rows: int = Field(100, ge=1, description="fewer predictions of a version: not judged")
    reference_max_rows: int = Field(5000, ge=10, description="test rows scored for a version's reference")
    confidence_bins: int = Field(10, ge=2)
    length_bins: int = Field(10, ge=2)
    max_label_psi: float = Field(0.25, ge=0, description="PSI of the predicted-label distribution")
    max_confidence_psi: float = Field(0.25, ge=0, description="PSI of the top-1 confidence")
    max_length_psi: float = Field(0.25, ge=0, description="PSI of the text length")
    max_oov_increase: float = Field(0.1, ge=0, description="rise of the out-of-vocabulary word share")
    # Estimated macro-F1 of the production rows below the same estimate on the reference (both from the
    # calibrated confidence, so sampling noise of the reference's own labels does not count).
    max_estimated_f1_drop: float = Field(0.05, ge=0)
    min_estimated_macro_f1: float | None = Field(None, ge=0, le=1, description="an absolute floor, if any")
    # Real macro-F1 on labelled feedback below the reference's real macro-F1 (null: not a check).
    max_real_f1_drop: float | None = Field(0.1, ge=0)
    min_feedback_rows: int = Field(50, ge=1, description="labelled rows needed to report the real macro-F1")
    feedback_sources: list[str] | None = Field(None, description="crawl sources whose labels are feedback; null = all")
    cooldown_hours: float = Field(24.0, ge=0, description="no second breach within this (data time)")
    retrain_on_breach: bool = Field(True, description="a breach makes the next decide train; the pipeline DAG "
                                                      "also runs on the production-drift Asset")


class LabelConfig(_Section):
    """Active learning (`freshet_label` DAG, `python -m tasks.label`): the day's labelling budget, picked from
    the texts the score step scored that day, pushed to Label Studio with the champion's prediction.

    `budget_per_day` texts: a random `control_fraction` of them as a control, the rest by uncertainty (the
    smallest margin between the two most probable classes: breaking ties), spread over clusters of the
    candidates' TF-IDF vectors (diversity) and over the champion's predicted labels (class balance). A text
    within `near_duplicate_threshold` (Jaccard of clean's shingles) of a labelled or already-queued text is
    never picked. Annotations come back through a crawl source of kind `label_studio`.
    """

    budget_per_day: int = Field(100, ge=0, description="texts queued for labelling per day")
    control_fraction: float = Field(0.1, ge=0, le=1, description="share of the budget picked at random")
    # The most uncertain `candidate_pool_factor` x (uncertainty picks) texts are clustered; each pick comes
    # from another cluster while one is left. 20: random sampling's final F1 with 61% of its labels on the
    # three seeds of the sweep in bench/active_learning.py (5: 73%, 10: 62%; margin alone 69%); on eight seeds
    # 75% (embeddings stand-in), 60% (blend stand-in), 87% fine-tuned (docs/benchmarks.md).
    candidate_pool_factor: float = Field(20.0, ge=1)
    near_duplicate_threshold: float = Field(0.85, gt=0, le=1)
    seed: int = 0
    # Score runs dated this many days up to the logical day, each taken by one label run only: a run the
    # prediction log's Asset starts is dated the day it runs, so it finds the scores of the day before.
    lookback_days: int = Field(2, ge=1)
    # The freshet_label DAG's schedule (it also runs when the prediction log's Asset is updated); null: no cron.
    cron: str | None = "@daily"
    label_studio: LabelStudioConnection | None = Field(None, description="null: the queue is only written as a "
                                                                         "Label Studio JSON tasks file")


class PipelineConfig(_Section):
    name: str = Field("freshet", pattern=r"^[a-zA-Z0-9_-]+$")
    labels: list[str] = Field(min_length=2)
    artifact_root: str
    mlflow: MlflowConfig
    runner: RunnerConfig = RunnerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    notify: NotifyConfig = NotifyConfig()
    approval: ApprovalConfig = ApprovalConfig()
    crawl: CrawlConfig
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    clean: CleanConfig = CleanConfig()
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compress: CompressConfig = CompressConfig()
    serve: ServeConfig = ServeConfig()
    score: ScoreConfig = ScoreConfig()
    monitor: MonitorConfig = MonitorConfig()
    label: LabelConfig = LabelConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _model_named_after_the_pipeline(cls, data: Any) -> Any:
        """`mlflow.model_name` left out: the registered model takes the pipeline's `name`."""
        if not isinstance(data, dict):
            return data
        mlflow, name = data.get("mlflow"), data.get("name", cls.model_fields["name"].default)
        if isinstance(mlflow, dict) and "model_name" not in mlflow:
            return {**data, "mlflow": {**mlflow, "model_name": name}}
        if isinstance(mlflow, MlflowConfig) and "model_name" not in mlflow.model_fields_set:
            return {**data, "mlflow": mlflow.model_copy(update={"model_name": name})}
        return data

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        return labels

    @model_validator(mode="after")
    def _model_preflight(self) -> PipelineConfig:
        # File-level checks of train.model (tasks/models/families.py: JSON reads, no transformers import).
        # Only where steps run on this machine: in docker/kubernetes mode the directory is inside the image.
        if self.runner.mode == "local":
            try:
                check_model_setting(self.train)
            except ModelSetupError as error:
                raise ValueError(str(error)) from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @property
    def config_hash(self) -> str:
        return digest_json(self.to_dict())

    def section_hash(self, *sections: str) -> str:
        data = self.to_dict()
        return digest_json({name: data[name] for name in ("labels", *sections)})


def digest_json(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _apply_override(data: dict[str, Any], override: str, origin: str) -> None:
    if "=" not in override:
        raise ConfigError(f"{origin}: override {override!r} must look like section.key=value")
    dotted, raw_value = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw_value)


_ENV_REFERENCE = re.compile(r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def _expand_env(value: Any, origin: str, where: tuple[str, ...] = ()) -> Any:
    """`${VAR}` (and `$VAR`) from the environment. FRESHET_HOME defaults to ./.freshet, as for the Makefile;
    any other unset `${VAR}` is an error naming the setting, so a path never silently becomes "${VAR}/..."
    (a bare unset `$VAR` stays as written: it may be part of a pattern or a password)."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name = match["braced"] or match["bare"]
            if name in os.environ:
                return os.environ[name]
            if name == "FRESHET_HOME":
                return str(Path(".freshet").resolve())
            if match["braced"] is None:
                return match[0]
            setting = ".".join(where) or "(top level)"
            raise ConfigError(f"{origin}: {setting}: the environment variable {name} is not set (it is used as ${{{name}}})")

        return _ENV_REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {key: _expand_env(item, origin, (*where, str(key))) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_env(item, origin, (*where, str(index))) for index, item in enumerate(value)]
    return value


def _resolve_model_path(data: dict[str, Any], config_dir: Path, origin: str) -> None:
    """A relative `train.model` is read first from the config file's directory: made absolute where a folder
    is there (or the value is written `./x` / `../x`, which is always a path). A bare name found neither there
    nor in the working directory, and not pinned to a hub revision, is refused now, naming both readings (only
    where steps run on this machine: in docker/kubernetes mode the directory is inside the image)."""
    train = data.get("train")
    if not isinstance(train, dict) or not isinstance(train.get("model"), str) or not is_relative_path(train["model"]):
        return
    model = train["model"]
    local = (config_dir / model).resolve()
    if local.is_dir() or is_explicit_path(model):
        train["model"] = str(local)
        return
    runner = data.get("runner")
    local_runner = not isinstance(runner, dict) or runner.get("mode", "local") == "local"
    if local_runner and train.get("revision") is None and not Path(model).is_dir():
        raise ConfigError(f"{origin}: invalid config: {unresolved_model_message(model, local)}")


def load_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load and validate a pipeline config; `${VAR}` in strings is expanded from the environment (an unset
    one is a ConfigError naming the setting; FRESHET_HOME defaults to ./.freshet); a relative `train.model`
    is read from the config file's directory first (`_resolve_model_path`)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for override in overrides:
        _apply_override(data, override, origin=str(path))
    data = _expand_env(data, str(path))
    _resolve_model_path(data, path.resolve().parent, str(path))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            # A whole-config check (the model preflight) has no location; its message names the setting.
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" if issue["loc"] else issue["msg"]
            for issue in error.errors()
        )
        raise ConfigError(f"{path}: invalid config: {problems}") from error
