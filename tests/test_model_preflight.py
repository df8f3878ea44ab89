"""`train.model` and the preflights: what it resolves to, and each bad input stopped with an error that names
the setting, the directory and the fix, at config load where a file check can tell, else when training starts."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from tasks.config import ConfigError, PipelineConfig, TrainConfig, load_config
from tasks.models.families import ModelSetupError, preflight, resolve_model_source
from tests.model_families import build_decoder_without_pad, build_family_dir, build_headless_architecture
from tests.pipeline_support import LABELS, tiny_config


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return build_family_dir("bert", tmp_path_factory.mktemp("bert") / "model")


def copy_without(source, target, *names):
    shutil.copytree(source, target)
    for name in names:
        (target / name).unlink()
    return target


def config_file(tmp_path, **train) -> str:
    data = tiny_config(tmp_path).to_dict()
    data["train"].update(train)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_train_model_resolves_bundled_names_directories_and_hub_ids(bert_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_source(TrainConfig()).kind == "minilm"
    assert resolve_model_source(TrainConfig(model="tiny")).kind == "tiny"
    local = resolve_model_source(TrainConfig(model=str(bert_dir)))
    assert (local.kind, local.location) == ("local", str(bert_dir.resolve()))
    (tmp_path / "org" / "name").mkdir(parents=True)  # an existing directory wins over the hub id it looks like
    assert resolve_model_source(TrainConfig(model="org/name")).kind == "local"
    hub = resolve_model_source(TrainConfig(model="google/electra-small-discriminator", revision="abc123"))
    assert (hub.kind, hub.location, hub.revision) == ("hub", "google/electra-small-discriminator", "abc123")
    assert resolve_model_source(TrainConfig(model="./not-there")).kind == "local"
    with pytest.raises(ModelSetupError, match=r"train.revision='abc' applies to a hub id only"):
        resolve_model_source(TrainConfig(model=str(bert_dir), revision="abc"))


def test_a_local_directory_passes_both_preflights(bert_dir, tmp_path):
    config = load_config(config_file(tmp_path, model=str(bert_dir)))
    found = preflight(config.train)
    assert (found.model_type, found.family.display, found.max_length) == ("bert", "BERT", 128)
    assert found.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert found.max_length_from == "the tokenizer's model_max_length"


@pytest.mark.parametrize(("missing", "message"), [
    (("config.json",), r"has no config.json, so it is not a Hugging Face model directory; save the model there"),
    (("tokenizer.json", "tokenizer_config.json"), r"has no tokenizer .*tokenizer.save_pretrained"),
    (("model.safetensors",), r"has no weights"),
])
def test_an_incomplete_directory_fails_when_the_config_is_loaded(bert_dir, tmp_path, missing, message):
    broken = copy_without(bert_dir, tmp_path / "broken", *missing)
    where = re.escape(str(broken))
    with pytest.raises(ConfigError, match=rf"train.model='{where}': {where} {message}"):
        load_config(config_file(tmp_path, model=str(broken)))


def test_a_missing_directory_and_a_too_long_max_length_fail_at_load(bert_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train.model='/nowhere/model': no such directory /nowhere/model"):
        load_config(config_file(tmp_path, model="/nowhere/model"))
    with pytest.raises(ConfigError, match=rf"train.max_length=512 is longer than {re.escape(str(bert_dir))} accepts "
                                          r"\(128, from the tokenizer's model_max_length\); lower train.max_length to "
                                          r"at most 128"):
        load_config(config_file(tmp_path, model=str(bert_dir), max_length=512))


def test_an_offline_hub_id_that_is_not_cached_names_the_setting_and_suggests_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(ConfigError, match=r"train.model='freshet-test/no-such-model' is a hub id, and this machine "
                                          r"cannot fetch it .* set train.model to that local directory"):
        load_config(config_file(tmp_path, model="freshet-test/no-such-model", revision="v1"))


def test_a_hub_id_in_the_local_cache_resolves_offline_at_its_pinned_revision(bert_dir, tmp_path, monkeypatch):
    """The hub's cache layout (models--org--name/snapshots/<commit>), as a download where there is network leaves it."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--freshet-test--tiny-bert"
    shutil.copytree(bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(config_file(tmp_path, model="freshet-test/tiny-bert", revision=commit))
    found = preflight(config.train)
    assert found.source.kind == "hub" and found.source.revision == commit
    assert found.model_dir == repo / "snapshots" / commit and found.model_type == "bert"


def config_in(folder, **train) -> str:
    """A config file in `folder` (not the working directory), with these train settings."""
    folder.mkdir(parents=True, exist_ok=True)
    data = tiny_config(folder).to_dict()
    data["train"].update(train)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_relative_model_path_is_read_from_the_config_files_directory(bert_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # elsewhere: the config lives in tmp_path/project
    shutil.copytree(bert_dir, tmp_path / "project" / "models" / "my-encoder")
    for written in ("models/my-encoder", "./models/my-encoder"):
        config = load_config(config_in(tmp_path / "project", model=written))
        assert config.train.model == str((tmp_path / "project" / "models" / "my-encoder").resolve())
        assert resolve_model_source(config.train).kind == "local"


def test_a_missing_bare_model_folder_fails_at_load_naming_both_readings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = re.escape(str((tmp_path / "project" / "models" / "my-encoder").resolve()))
    with pytest.raises(ConfigError, match=rf"train.model='models/my-encoder' is neither a local folder nor a usable hub "
                                          rf"id: a local folder was not found at {where} .*as a hub id it needs "
                                          r"network and a pinned train.revision"):
        load_config(config_in(tmp_path / "project", model="models/my-encoder"))
    with pytest.raises(ConfigError, match=rf"train.model='{where}': no such directory {where}"):
        load_config(config_in(tmp_path / "project", model="./models/my-encoder"))
    with pytest.raises(ModelSetupError, match=r"train.model='org/name' is neither a local folder nor a usable hub id"):
        resolve_model_source(TrainConfig(model="org/name"))


def test_docker_and_kubernetes_modes_leave_the_directory_to_the_image(tmp_path):
    base = tiny_config(tmp_path).to_dict()
    base["train"]["model"] = "/opt/models/in-the-image"
    base["runner"] = {"mode": "kubernetes"}
    assert PipelineConfig.model_validate(base).train.model == "/opt/models/in-the-image"


def test_an_architecture_without_a_sequence_classification_head(tmp_path):
    directory = build_headless_architecture(tmp_path / "marian")
    settings = TrainConfig(model=str(directory), max_length=16)
    with pytest.raises(ModelSetupError, match=rf"train.model: {re.escape(str(directory))} is a MarianModel "
                                              r"\(model_type 'marian'\), an architecture with no "
                                              r"sequence-classification head"):
        preflight(settings)


def test_a_decoder_only_model_without_a_pad_token(tmp_path):
    directory = build_decoder_without_pad(tmp_path / "gpt2")
    with pytest.raises(ModelSetupError, match=rf"train.model: the tokenizer in {re.escape(str(directory))} has no "
                                              r"pad token \(gpt2 is decoder-only.*tokenizer.pad_token = "
                                              r"tokenizer.eos_token"):
        preflight(TrainConfig(model=str(directory), max_length=16))


def test_roberta_positions_need_the_tokenizer_and_model_to_agree_on_the_pad_id(tmp_path):
    directory = build_family_dir("roberta", tmp_path / "roberta")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "pad_token_id": 0}))
    with pytest.raises(ModelSetupError, match=r"pads with id 1 but the model's pad_token_id is 0; RoBERTa derives "
                                              r"positions from the pad id"):
        preflight(TrainConfig(model=str(directory), max_length=16))


def test_roberta_max_length_comes_from_the_positions_minus_the_offset_when_the_tokenizer_has_none(tmp_path):
    directory = build_family_dir("roberta", tmp_path / "roberta")
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = int(1e30)  # transformers' "unknown"
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    found = preflight(TrainConfig(model=str(directory), max_length=16))
    assert found.max_length == 128  # 130 positions - (padding_idx 1 + 1)
    assert found.max_length_from == "max_position_embeddings 130 - 2 (the family's position offset)"


def test_only_the_inputs_the_forward_accepts_reach_the_model(tmp_path):
    """A DistilBERT whose tokenizer returns token_type_ids (as BERT-derived ones do): they are dropped."""
    from transformers import AutoTokenizer

    from tasks.models.build import build_model
    from tasks.models.inference import predict

    directory = build_family_dir("distilbert", tmp_path / "distilbert")
    settings_file = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**tokenizer_config,
                                         "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}))
    assert "token_type_ids" in AutoTokenizer.from_pretrained(str(directory))("a text")
    settings = TrainConfig(model=str(directory), max_length=16)
    found = preflight(settings)
    assert found.input_names == ("input_ids", "attention_mask")
    model = build_model(settings, LABELS)
    result = predict(model, found.tokenizer, ["alpha0 alpha1", "short"], max_length=16)
    assert result.probabilities.shape == (2, len(LABELS))


def test_a_champion_whose_label_map_disagrees_stops_the_warm_start(tmp_path):
    from tasks.models.build import LabelMapError, build_model

    champion = build_model(TrainConfig(model="tiny", max_length=16), ["alpha", "beta", "gamma"])
    champion.save_pretrained(tmp_path / "champion")
    with pytest.raises(LabelMapError, match=r"label map \['alpha', 'beta', 'gamma'\] has \['gamma'\], which the run's "
                                            r"label set \['alpha', 'beta', 'delta'\] lacks .* add \['gamma'\] back to "
                                            r"`labels`, or set train.warm_start: false"):
        build_model(TrainConfig(model="tiny", max_length=16), ["alpha", "beta", "delta"],
                    init_dir=tmp_path / "champion")


def test_a_grown_head_keeps_the_known_rows_and_initialises_the_new_one(tmp_path):
    from tasks.models.build import build_model, model_labels

    settings = TrainConfig(model="tiny", max_length=16)
    champion = build_model(settings, ["alpha", "beta", "gamma"])
    champion.save_pretrained(tmp_path / "champion")
    grown = build_model(settings, ["alpha", "beta", "gamma", "delta"], init_dir=tmp_path / "champion")
    reordered = build_model(settings, ["gamma", "alpha", "beta"], init_dir=tmp_path / "champion")
    assert model_labels(grown) == ["alpha", "beta", "gamma", "delta"] and grown.config.num_labels == 4
    old_weight, old_bias = champion.classifier.weight, champion.classifier.bias
    assert torch.equal(grown.classifier.weight[:3], old_weight) and torch.equal(grown.classifier.bias[:3], old_bias)
    assert grown.classifier.bias[3] == 0 and 0 < float(grown.classifier.weight[3].std()) < 0.1
    assert torch.equal(reordered.classifier.weight, old_weight[[2, 0, 1]])
    # The encoder is the champion's, untouched.
    assert torch.equal(grown.bert.embeddings.word_embeddings.weight, champion.bert.embeddings.word_embeddings.weight)


def test_a_failed_training_preflight_loses_nothing_crawled_or_registered(tmp_path):
    """The train step stops before training; the accepted snapshot and its manifests stay, nothing is registered."""
    from tasks import model_registry, train
    from tasks.contract import read_manifest
    from tasks.snapshots import read_history
    from tasks.store import ArtifactStore
    from tests.corpus_support import synthetic_corpus
    from tests.pipeline_support import fake_upstream

    directory = build_headless_architecture(tmp_path / "marian")
    config = tiny_config(tmp_path, model=str(directory))  # passes the file-level check at load
    store = ArtifactStore(config.artifact_root)
    upstream = fake_upstream(config, store, "run-1", "2026-11-01", synthetic_corpus(60, LABELS, seed=1))
    with pytest.raises(ModelSetupError, match="no sequence-classification head"):
        train.run(config, {"augment": upstream["augment"], "clean": upstream["clean"]}, run_id="run-1", store=store,
                  logical_date="2026-11-01")
    assert read_manifest(store, "run-1", "train") is None
    assert read_manifest(store, "run-1", "clean") is not None and len(read_history(store)) == 1
    assert model_registry.version_by_alias(config, model_registry.CHALLENGER) is None
