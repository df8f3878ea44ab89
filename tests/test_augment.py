"""tasks.augment: tagged, deterministic EDA augmentation of the train split, balanced under a cap."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import augment
from tasks.config import AugmentConfig, ModelAugmenterConfig, PipelineConfig
from tasks.contract import StepContext, execute
from tasks.lexicon import WordNet
from tasks.manifest import Manifest, StepError
from tasks.records import DATASET_SCHEMA, CleanFacts, content_hash, read_rows, write_parquet
from tasks.store import ArtifactStore
from tests.pipeline_support import dataset_inputs, step_mlflow_run

LABELS = ["libs", "utils", "net"]


def row(record_id: str, label: str, split: str = "train", words: int = 5) -> dict[str, Any]:
    text = " ".join(f"{record_id}w{index}" for index in range(words))
    return {"id": record_id, "text": text, "label": label, "source": "t", "fetched_at": "2026-11-25T00:00:00Z",
            "content_hash": content_hash(text), "split": split, "normalized_hash": content_hash(text)}


def train_set(sizes: Mapping[str, int]) -> list[dict[str, Any]]:
    return [row(f"{label}-{number}", label) for label, size in sizes.items() for number in range(size)]


def settings(**overrides: Any) -> AugmentConfig:
    return AugmentConfig(**{"swap_probability": 0.2, "delete_probability": 0.2, "augmentations_per_row": 2,
                            "balance_to_fraction_of_largest": 1.0, "max_augmented_fraction": 1.0, **overrides})


def augmented(rows: Sequence[Mapping[str, Any]], config: AugmentConfig) -> augment.AugmentResult:
    return augment.augment_rows(rows, LABELS, config, augment.default_augmenters(config))


# ---------------------------------------------------------------------------------- augmenters


def test_random_swap_keeps_the_words() -> None:
    text = "one two three four five"
    swapped = augment.RandomSwap(0.2).augment(text, random.Random(1))
    assert swapped != text and sorted(swapped.split()) == sorted(text.split())
    assert augment.RandomSwap(0.2).augment("single", random.Random(1)) is None


def test_random_deletion_keeps_at_least_one_word() -> None:
    assert len(augment.RandomDeletion(1.0).augment("one two three", random.Random(1)).split()) == 1
    assert augment.RandomDeletion(0.0).augment("one two three", random.Random(1)) == "one two three"


# ------------------------------------------------------------------------------------ balancing


def test_minority_classes_are_topped_up_toward_the_target() -> None:
    result = augmented(train_set({"libs": 10, "utils": 4, "net": 2}), settings(balance_to_fraction_of_largest=0.8))
    assert {label: counts["target"] for label, counts in result.classes.items()} == {"libs": 10, "utils": 8, "net": 8}
    # utils needs 4 more (<= 2 per row); net would need 6 but 2 rows x 2 augmentations = 4.
    assert {label: counts["augmented"] for label, counts in result.classes.items()} == {"libs": 0, "utils": 4, "net": 4}
    assert Counter(item["augmented_from"] is None for item in result.rows) == {True: 16, False: 8}


def test_the_cap_bounds_the_total_and_is_shared_by_deficit() -> None:
    result = augmented(train_set({"libs": 20, "utils": 4, "net": 2}), settings(max_augmented_fraction=0.25))
    # Wanted: utils 8, net 4 -> capped at floor(0.25 x 26) = 6, shared 4 : 2.
    assert [result.classes[label]["augmented"] for label in LABELS] == [0, 4, 2]


def test_quotas_share_a_cap_with_largest_remainders() -> None:
    quotas = augment.augmentation_quotas({"a": 10, "b": 1, "c": 1}, {"a": 10, "b": 4, "c": 3},
                                         settings(augmentations_per_row=5, max_augmented_fraction=0.25))
    assert quotas == {"a": 0, "b": 2, "c": 1}  # wanted 3 and 2, cap 3


def test_no_augmentation_without_balancing() -> None:
    result = augmented(train_set({"libs": 10, "utils": 4, "net": 2}), settings(balance_to_fraction_of_largest=0.0))
    assert len(result.rows) == 16


def test_augmented_rows_are_tagged_and_differ_from_their_source() -> None:
    rows = train_set({"libs": 6, "utils": 2, "net": 0})
    result = augmented(rows, settings())
    originals = {item["id"]: item for item in rows}
    new = [item for item in result.rows if item["augmented_from"] is not None]
    assert new and result.classes["net"] == {"real": 0, "target": 6, "augmented": 0, "final": 0}
    for item in new:
        source = originals[item["augmented_from"]]
        assert item["id"].startswith(f"{source['id']}#aug") and item["label"] == source["label"]
        assert item["text"] != source["text"] and item["content_hash"] == content_hash(item["text"])
    assert len({item["text"] for item in result.rows}) == len(result.rows)


def test_results_identical_to_the_original_are_skipped() -> None:
    one_word_rows = [row(f"u-{number}", "utils", words=1) for number in range(3)]
    result = augmented(train_set({"libs": 6}) + one_word_rows, settings())
    assert result.classes["utils"]["augmented"] == 0 and result.skipped == 6


def test_augmentation_is_deterministic_per_seed_and_id() -> None:
    rows = train_set({"libs": 8, "utils": 3, "net": 2})
    first, again = augmented(rows, settings()), augmented(list(reversed(rows)), settings())
    def pairs(result: augment.AugmentResult) -> list[tuple[str, str]]:
        return sorted((item["id"], item["text"]) for item in result.rows)

    assert pairs(first) == pairs(again)
    reseeded = augmented(rows, settings(seed=7))
    assert {item["text"] for item in reseeded.rows} != {item["text"] for item in first.rows}


# ------------------------------------------------------------------------------------ lexicons

# A WordNet in the real database format (wndb(5WN)), small enough to reason about:
# part of speech -> synsets (most frequent sense of each lemma first).
TINY_WORDNET = {
    "noun": [["library", "program_library"], ["library", "depository_library"], ["library", "archive"],
             ["tool", "instrument"], ["goose"], ["file", "data_file"]],
    "verb": [["parse", "analyze", "break_down"], ["file", "register"]],
    "adj": [["fast", "quick(a)"]],
    "adv": [["quickly", "rapidly"]],
}


def write_wordnet(directory: Path, synsets: Mapping[str, list[list[str]]] = TINY_WORDNET) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    header = "  1 This software and database is being provided to you, the LICENSEE\n"
    for pos, groups in synsets.items():
        data, offsets = header, []
        for words in groups:
            offsets.append(len(data.encode()))
            data += (f"{offsets[-1]:08d} 00 {pos[0]} {len(words):02x} "
                     + " ".join(f"{word} 0" for word in words) + " 000 | a gloss  \n")
        (directory / f"data.{pos}").write_text(data)
        senses: dict[str, list[int]] = {}
        for words, offset in zip(groups, offsets, strict=True):
            for word in words:
                senses.setdefault(word.split("(")[0].lower(), []).append(offset)
        (directory / f"index.{pos}").write_text(header + "".join(
            f"{lemma} {pos[0]} {len(found)} 0 {len(found)} 0 " + " ".join(f"{offset:08d}" for offset in found) + "  \n"
            for lemma, found in sorted(senses.items())))
    (directory / "noun.exc").write_text("geese goose\n")
    return directory


@pytest.fixture(scope="module")
def wordnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wordnet(tmp_path_factory.mktemp("wordnet"))


def test_wordnet_synonyms_across_senses_and_parts_of_speech(wordnet_dir: Path) -> None:
    wordnet = WordNet(wordnet_dir)
    assert wordnet.synonyms("library") == ("archive", "depository library", "program library")
    assert wordnet.synonyms("file") == ("data file", "register")  # noun and verb senses
    assert wordnet.synonyms("fast") == ("quick",)  # the adjective marker "(a)" is not part of the word
    assert WordNet(wordnet_dir, max_senses=1).synonyms("library") == ("program library",)
    assert wordnet.describe()["lemmas"] == 18 and wordnet.describe()["kind"] == "wordnet"


def test_wordnet_morphology_finds_base_forms(wordnet_dir: Path) -> None:
    wordnet = WordNet(wordnet_dir)
    assert wordnet.synonyms("libraries") == wordnet.synonyms("library")  # suffix rule ies -> y
    assert wordnet.synonyms("parsing") == ("analyze", "break down")  # ing -> e
    assert wordnet.synonyms("geese") == ()  # exception list: goose, whose only synset is itself
    assert wordnet.base_forms("geese", "noun") == ["goose"]


@pytest.mark.parametrize("word", ["Library", "LIBRARY", "the", "a", "li", "lib2", "données"])
def test_names_acronyms_stop_words_and_odd_tokens_are_never_replaced(wordnet_dir: Path, word: str) -> None:
    assert WordNet(wordnet_dir).synonyms(word) == ()


def test_a_missing_wordnet_names_the_path_and_the_setting(tmp_path: Path) -> None:
    with pytest.raises(StepError, match=rf"WordNet lexicon not found: {tmp_path / 'nowhere'} does not exist "
                                        r"\(augment.wordnet_path\)\. Install the Debian package `wordnet-base`"):
        WordNet(tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "index.noun").write_text("")
    with pytest.raises(StepError, match=r"partial lacks data.noun, index.verb, data.verb"):
        WordNet(tmp_path / "partial")


@pytest.mark.skipif(not Path("/usr/share/wordnet/index.noun").is_file(),
                    reason="Debian package wordnet-base not installed")
def test_the_debian_wordnet_package_is_read() -> None:
    wordnet = WordNet("/usr/share/wordnet")
    assert "program library" in wordnet.synonyms("libraries")
    assert {"rapidly", "speedily"} <= set(wordnet.synonyms("quickly"))
    assert wordnet.describe()["lemmas"] > 140_000


def test_synonym_replacement_keeps_punctuation_and_is_seeded(wordnet_dir: Path) -> None:
    replace = augment.SynonymReplacement(WordNet(wordnet_dir), 0.1)
    text = "fast (library) for Python files"
    variants = {replace.augment(text, random.Random(seed)) for seed in range(30)}
    # One word (0.1 x 5 words, at least one) gets one of its synonyms; "for" and "Python" never change.
    every_single_replacement = {
        "quick (library) for Python files", *(f"fast ({synonym}) for Python files" for synonym in
                                              ("archive", "depository library", "program library")),
        "fast (library) for Python data file", "fast (library) for Python register"}
    assert variants == every_single_replacement
    assert replace.augment(text, random.Random(3)) == replace.augment(text, random.Random(3))
    assert replace.augment("nothing known here", random.Random(1)) is None


def test_random_insertion_adds_a_synonym_and_keeps_the_words(wordnet_dir: Path) -> None:
    insert = augment.RandomInsertion(WordNet(wordnet_dir), 0.1)
    inserted = insert.augment("a fast tool", random.Random(2)).split()
    [new] = [word for word in inserted if word not in ("a", "fast", "tool")]
    assert new in ("quick", "instrument") and [word for word in inserted if word != new] == ["a", "fast", "tool"]


def test_synonym_operations_need_a_lexicon() -> None:
    with pytest.raises(ValueError, match="need a lexicon: set augment.lexicon=wordnet"):
        AugmentConfig(synonym_probability=0.1)
    assert augment.load_lexicon(AugmentConfig()) is None


# --------------------------------------------------------------------- model-based augmenters


def test_an_unregistered_model_augmenter_fails_naming_the_registered_ones() -> None:
    with pytest.raises(StepError, match=r"augment.model_based.name='paraphrase-t5' is not an available model-based "
                                        r"augmenter; registered: \['back_translation'"):
        augment.model_augmenter(ModelAugmenterConfig(name="paraphrase-t5"))
    assert augment.model_augmenter(None) is None


def test_back_translation_without_its_local_models_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(StepError, match=r"needs option 'backward_model'"):
        augment.model_augmenter(ModelAugmenterConfig(name="back_translation", forward_model=str(tmp_path)))
    with pytest.raises(StepError, match=rf"forward_model {tmp_path} is not a local Hugging Face model directory"):
        augment.model_augmenter(ModelAugmenterConfig(name="back_translation", forward_model=str(tmp_path),
                                                     backward_model=str(tmp_path)))


# -------------------------------------------------------------------------------------- the step


def make_config(root: Path, tracking: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "labels": LABELS,
        "artifact_root": str(root / "artifacts"),
        "mlflow": {"tracking_uri": f"sqlite:///{tracking}/mlflow.db",
                   "artifact_location": str(tracking / "mlartifacts")},
        "crawl": {"sources": [{"name": "t", "url": "http://127.0.0.1:1/"}]},
        "augment": {"augmentations_per_row": 1, "balance_to_fraction_of_largest": 1.0, "max_augmented_fraction": 0.5},
    })


def clean_manifest(config: PipelineConfig, store: ArtifactStore, run_id: str,
                   rows: Sequence[Mapping[str, Any]]) -> Manifest:
    """A real clean manifest (through `execute`) whose dataset is `rows`."""
    def body(ctx: StepContext) -> None:
        write_parquet(rows, ctx.out_dir / "dataset.parquet", schema=DATASET_SCHEMA)
        ctx.add_output("dataset", "dataset.parquet", "dataset", rows=len(rows))
        ctx.facts.update(CleanFacts(prior_snapshots=[]).dump())

    return execute("clean", body, config, {}, run_id=run_id, store=store)


DATASET = [
    *train_set({"libs": 8, "utils": 2, "net": 2}),
    row("held-out-1", "net", split="validation"),
    row("held-out-2", "net", split="test"),
]


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory, tracking: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("augmented")
    config = make_config(root, tracking)
    store = ArtifactStore(config.artifact_root)
    upstream = clean_manifest(config, store, "aug-1", DATASET)
    manifest = augment.run(config, {"clean": upstream}, run_id="aug-1", store=store)
    return {"root": root, "config": config, "store": store, "upstream": upstream, "manifest": manifest,
            "train": read_rows(store.local_path(manifest.output("train").uri))}


def test_only_the_train_split_is_used_and_augmented(step: dict[str, Any]) -> None:
    assert {item["split"] for item in step["train"]} == {"train"}
    assert not any(item["id"].startswith("held-out") or str(item["augmented_from"]).startswith("held-out")
                   for item in step["train"])


def test_step_output_counts_and_report(step: dict[str, Any]) -> None:
    metrics = step["manifest"].metrics
    # Targets 8 each; 1 augmentation per row gives utils and net 2 each; the cap (6) is not reached.
    assert (metrics["rows_real"], metrics["rows_augmented"], metrics["classes_balanced"]) == (12, 4, 1)
    assert (metrics["rows_final.utils"], metrics["rows_augmented.net"], metrics["rows_real.libs"]) == (4, 2, 8)
    report = json.loads(step["store"].local_path(step["manifest"].output("augment_report").uri).read_text())
    assert report["classes"]["net"] == {"real": 2, "target": 8, "augmented": 2, "final": 4}
    assert sum(1 for item in step["train"] if item["augmented_from"]) == 4


def test_rerun_is_reused(step: dict[str, Any]) -> None:
    again = augment.run(step["config"], {"clean": step["upstream"]}, run_id="aug-1", store=step["store"])
    assert again.reused and again.output("train").digest == step["manifest"].output("train").digest


def test_cli_prints_the_manifest_last_and_rejects_a_missing_input(step: dict[str, Any],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config_file = step["root"] / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(step["config"].to_dict()))
    assert augment.main(["--config", str(config_file), "--run-id", "aug-1", "--input", "clean"]) == 0
    manifest = Manifest.model_validate_json(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest.step == "augment" and manifest.reused

    assert augment.main(["--config", str(config_file), "--run-id", "aug-2", "--input", "clean"]) == 2
    assert "freshet augment: error: input 'clean': no manifest for run 'aug-2'" in capsys.readouterr().err


def test_augmented_rows_come_only_from_train_rows(step: dict[str, Any]) -> None:
    train_ids = {item["id"] for item in DATASET if item["split"] == "train"}
    sources = {item["augmented_from"] for item in step["train"] if item["augmented_from"]}
    assert sources and sources <= train_ids


def test_report_says_no_lexicon_and_model_based_not_configured(step: dict[str, Any]) -> None:
    report = json.loads(step["store"].local_path(step["manifest"].output("augment_report").uri).read_text())
    assert report["lexicon"] == "none" and report["model_based"] == "model-based augmentation: not configured"
    assert report["augmenters"] == ["random_swap", "random_deletion"]
    assert augment.AugmentFacts.of(step["manifest"]).model_based == "model-based augmentation: not configured"


def test_mlflow_run_has_the_clean_and_train_snapshots_as_dataset_inputs(step: dict[str, Any]) -> None:
    run = step_mlflow_run(step["config"].mlflow.tracking_uri, "augment", "aug-1")
    inputs = {context: (name, source, digest) for context, (name, source, _, digest) in dataset_inputs(run).items()}
    dataset, train = step["upstream"].output("dataset"), step["manifest"].output("train")
    assert inputs == {"input": ("freshet.dataset", json.dumps({"uri": dataset.uri}), dataset.digest),
                      "output": ("freshet.train", json.dumps({"uri": train.uri}), train.digest)}
    assert run.data.tags["freshet.augment.lexicon"] == "none"
    assert run.data.tags["freshet.augment.model_based"] == "not configured"


def worded_row(record_id: str, label: str, split: str = "train") -> dict[str, Any]:
    return {**row(record_id, label, split), "text": f"fast library tool {record_id}"}


WORDED = [*(worded_row(f"libs-{n}", "libs") for n in range(8)), *(worded_row(f"net-{n}", "net") for n in range(2)),
          worded_row("utils-0", "utils"), worded_row("held-out", "utils", "test")]


def worded_config(root: Path, tracking: Path, **augment_settings: Any) -> PipelineConfig:
    data = make_config(root, tracking).to_dict()
    data["augment"].update({"swap_probability": 0, "delete_probability": 0, "augmentations_per_row": 3,
                            "max_augmented_fraction": 1.0,
                            "synonym_probability": 0.3, "insert_probability": 0.3, **augment_settings})
    return PipelineConfig.model_validate(data)


def test_step_with_wordnet_reports_the_lexicon_and_uses_synonyms(tmp_path: Path, tracking: Path,
                                                                wordnet_dir: Path) -> None:
    config = worded_config(tmp_path, tracking, lexicon="wordnet", wordnet_path=str(wordnet_dir))
    store = ArtifactStore(config.artifact_root)
    manifest = augment.run(config, {"clean": clean_manifest(config, store, "wn-1", WORDED)}, run_id="wn-1", store=store)
    report = json.loads(store.local_path(manifest.output("augment_report").uri).read_text())
    assert report["lexicon"]["kind"] == "wordnet" and report["lexicon"]["path"] == str(wordnet_dir)
    assert report["augmenters"] == ["synonym_replacement", "random_insertion"]
    assert set(report["by_augmenter"]) <= {"synonym_replacement", "random_insertion"}
    assert sum(report["by_augmenter"].values()) == manifest.metrics["rows_augmented"]
    new = [item for item in read_rows(store.local_path(manifest.output("train").uri)) if item["augmented_from"]]
    # net 2 rows x 3 and utils 1 x 3 tries; a variant equal to an earlier one is skipped.
    assert len(new) == manifest.metrics["rows_augmented"] == 9 - report["skipped"] >= 6
    assert all({"quick", "archive", "instrument", "program", "depository"} & set(item["text"].split()) for item in new)
    assert "held-out" not in {item["augmented_from"] for item in new}


def test_step_with_a_missing_wordnet_fails_naming_the_path(tmp_path: Path, tracking: Path) -> None:
    config = worded_config(tmp_path, tracking, lexicon="wordnet", wordnet_path=str(tmp_path / "no-wordnet"))
    store = ArtifactStore(config.artifact_root)
    upstream = clean_manifest(config, store, "wn-2", WORDED)
    with pytest.raises(StepError, match=rf"WordNet lexicon not found: {tmp_path / 'no-wordnet'} does not exist"):
        augment.run(config, {"clean": upstream}, run_id="wn-2", store=store)


@dataclass(frozen=True)
class ReverseWords:
    """A stand-in model-based augmenter, registered the way a real one is."""

    name: str = "reverse_words"

    def augment(self, text: str, rng: random.Random) -> str | None:
        return " ".join(reversed(text.split()))


def test_a_registered_model_augmenter_plugs_into_the_step(tmp_path: Path, tracking: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(augment.MODEL_AUGMENTERS, "reverse_words", lambda settings: ReverseWords())
    config = worded_config(tmp_path, tracking, synonym_probability=0, insert_probability=0,
                           model_based={"name": "reverse_words", "checkpoint": "n/a"})
    store = ArtifactStore(config.artifact_root)
    manifest = augment.run(config, {"clean": clean_manifest(config, store, "mb-1", WORDED)}, run_id="mb-1", store=store)
    report = json.loads(store.local_path(manifest.output("augment_report").uri).read_text())
    assert report["model_based"] == {"name": "reverse_words", "checkpoint": "n/a"}
    assert report["by_augmenter"] == {"reverse_words": 3}  # one variant per row: the 2nd and 3rd repeat it
    config = worded_config(tmp_path, tracking, synonym_probability=0, insert_probability=0,
                           model_based={"name": "paraphrase"})
    with pytest.raises(StepError, match=r"augment.model_based.name='paraphrase' is not an available"):
        augment.run(config, {"clean": clean_manifest(config, store, "mb-2", WORDED)}, run_id="mb-2", store=store)


def tiny_seq2seq(directory: Path) -> Path:
    """A randomly initialised BART with a word-level tokenizer, saved the way a local model directory is."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "[UNK]", *["fast", "library", "tool", "for", "parsing", "files", "quick", "archive", "data"]]
    backend = Tokenizer(WordLevel({word: number for number, word in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="[UNK]")
    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=len(words), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None))
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def test_back_translation_runs_two_local_models_seeded(tmp_path: Path) -> None:
    directory = tiny_seq2seq(tmp_path / "tiny-bart")
    translate = augment.model_augmenter(ModelAugmenterConfig(
        name="back_translation", forward_model=str(directory), backward_model=str(directory), max_length=12))
    outputs = [translate.augment("fast library tool for files", random.Random(seed)) for seed in (1, 1, 2)]
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]  # a function of the row's generator
    vocabulary = {"fast", "library", "tool", "for", "parsing", "files", "quick", "archive", "data", "[UNK]"}
    assert all(set(text.split()) <= vocabulary for text in outputs if text)
