"""Compression variants on a tiny random BERT, and the serving-variant selection policy."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tasks.compress import (
    DISTILLED,
    DISTILLED_ONNX_INT8,
    FP32,
    INT8,
    ONNX_FP32,
    ONNX_INT8,
    PRUNED,
    CompressFacts,
    select_serving_variant,
)
from tasks.config import TrainConfig
from tests.pipeline_support import LABELS

TEXTS = ["alpha0 alpha1 alpha2", "gamma3", "a somewhat longer text with more tokens in it", "beta"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tasks.models.build import build_model, load_tokenizer

    directory = tmp_path_factory.mktemp("tiny_model")
    build_model(TrainConfig(model="tiny", max_length=16), LABELS).save_pretrained(directory)
    load_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def onnx_files(tiny_model_dir, tmp_path_factory):
    from tasks.models.build import load_classifier
    from tasks.models.compression import export_onnx, quantize_onnx_int8

    model, tokenizer = load_classifier(tiny_model_dir)
    directory = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, tokenizer, directory / "model.onnx")
    return {ONNX_FP32: fp32, ONNX_INT8: quantize_onnx_int8(fp32, directory / "model.int8.onnx")}


def reference(tiny_model_dir):
    from tasks.models.build import load_classifier
    from tasks.models.inference import predict

    model, tokenizer = load_classifier(tiny_model_dir)
    return predict(model, tokenizer, TEXTS, max_length=16)


def test_onnx_fp32_matches_torch_on_every_batch_shape(tiny_model_dir, onnx_files):
    from tasks.models.compression import load_serving_model
    from tasks.models.inference import predict

    expected = reference(tiny_model_dir)
    model, tokenizer = load_serving_model(tiny_model_dir, ONNX_FP32, onnx_files[ONNX_FP32])
    for batch_size in (1, 3, 32):  # dynamic batch and sequence axes
        result = predict(model, tokenizer, TEXTS, max_length=16, batch_size=batch_size)
        np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-5)


def test_onnx_int8_is_smaller_and_predicts(tiny_model_dir, onnx_files):
    from tasks.models.compression import load_serving_model
    from tasks.models.inference import predict

    assert onnx_files[ONNX_INT8].stat().st_size < 0.5 * onnx_files[ONNX_FP32].stat().st_size
    model, tokenizer = load_serving_model(tiny_model_dir, ONNX_INT8, onnx_files[ONNX_INT8])
    result = predict(model, tokenizer, TEXTS, max_length=16)
    assert result.probabilities.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.abs(result.probabilities - reference(tiny_model_dir).probabilities).max() < 0.1


def test_int8_dynamic_and_pruned_variants_predict(tiny_model_dir):
    import torch

    from tasks.models.build import load_classifier
    from tasks.models.compression import load_serving_model, prune_magnitude
    from tasks.models.inference import predict

    int8, tokenizer = load_serving_model(tiny_model_dir, INT8)
    assert predict(int8, tokenizer, TEXTS, max_length=16).probabilities.shape == (len(TEXTS), len(LABELS))
    pruned, sparsity = prune_magnitude(load_classifier(tiny_model_dir)[0], 0.3)
    linears = [module for module in pruned.modules() if isinstance(module, torch.nn.Linear)]
    assert sparsity == pytest.approx(0.3, abs=0.01)
    assert not any(hasattr(module, "weight_orig") for module in linears)  # made permanent
    assert predict(pruned, tokenizer, TEXTS, max_length=16).probabilities.shape == (len(TEXTS), len(LABELS))


def test_onnx_variant_needs_its_file(tiny_model_dir):
    from tasks.models.compression import load_serving_model

    with pytest.raises(ValueError, match="needs an ONNX file"):
        load_serving_model(tiny_model_dir, ONNX_INT8)
    with pytest.raises(ValueError, match="unknown serving variant"):
        load_serving_model(tiny_model_dir, "fp8")


@pytest.mark.parametrize(("model_config", "with_onnx", "expected_type"), [
    ({"variant": ONNX_INT8}, True, "OnnxClassifier"),
    ({"variant": ONNX_INT8}, False, "BertForSequenceClassification"),  # no file logged: fp32 weights
    ({"quantization": INT8}, False, "BertForSequenceClassification"),  # versions registered before `variant`
    ({"quantization": None}, False, "BertForSequenceClassification"),
])
def test_pyfunc_serves_the_configured_variant(tiny_model_dir, onnx_files, model_config, with_onnx, expected_type):
    import pandas as pd

    from tasks.models.serving import TextClassifier

    artifacts = {"hf_model": str(tiny_model_dir)} | ({"onnx_model": str(onnx_files[ONNX_INT8])} if with_onnx else {})
    served = TextClassifier()
    served.load_context(SimpleNamespace(artifacts=artifacts, model_config=model_config | {"max_length": 16}))
    assert type(served.model).__name__ == expected_type
    result = served.predict(None, pd.DataFrame({"text": TEXTS}))
    assert list(result.columns) == ["label", "probability"] and set(result["label"]) <= set(LABELS)
    if model_config.get("quantization") == INT8:
        assert any("quantized" in type(module).__module__ for module in served.model.modules())


def row(size, latency, **deltas):
    return {"size_ratio": size, "latency_ratio_batch1": latency, "macro_f1_delta": deltas or {"frozen": 0.0}}


@pytest.mark.parametrize(("table", "expected"), [
    ({}, FP32),
    ({INT8: row(0.3, 0.8), ONNX_FP32: row(1.0, 0.5), ONNX_INT8: row(0.25, 0.4)}, ONNX_INT8),  # smallest
    ({INT8: row(0.3, 0.8), ONNX_INT8: row(0.25, 0.4, frozen=-0.01, fresh=-0.05)}, INT8),  # drop too big on one slice
    ({INT8: row(0.3, 0.8, frozen=-0.04), ONNX_INT8: row(0.25, 0.4, fresh=-0.031)}, FP32),  # nothing within the drop
    ({INT8: row(0.300, 0.9), ONNX_INT8: row(0.304, 0.5)}, ONNX_INT8),  # sizes tie within 1%: faster wins
    ({ONNX_FP32: row(1.002, 0.6)}, ONNX_FP32),  # same size as fp32, faster
    ({ONNX_FP32: row(1.002, 1.3)}, FP32),  # same size, slower: fp32
    ({PRUNED: row(0.1, 0.5)}, FP32),  # not servable
    ({INT8: row(0.3, 0.8, frozen=float("nan"), fresh=-0.01)}, INT8),  # empty slice is not judged
    ({INT8: row(0.3, 0.8, frozen=-0.03)}, INT8),  # the bound is inclusive
    ({ONNX_INT8: row(0.25, 0.4), DISTILLED_ONNX_INT8: row(0.19, 0.1, frozen=-0.004)}, DISTILLED_ONNX_INT8),
    ({ONNX_INT8: row(0.25, 0.4), DISTILLED_ONNX_INT8: row(0.19, 0.1, frozen=-0.05)}, ONNX_INT8),  # student too weak
    ({DISTILLED: row(0.6, 0.5)}, DISTILLED),
])
def test_selection_policy(table, expected):
    assert select_serving_variant(table, max_drop=0.03) == expected


# ------------------------------------------------------------------------------ distillation


@pytest.fixture(scope="module")
def deep_teacher(tmp_path_factory):
    """A tiny 4-layer teacher, so a 2-layer student has layers to choose."""
    from tasks.config import TinyModelConfig
    from tasks.models.build import build_model, load_tokenizer

    directory = tmp_path_factory.mktemp("deep_teacher")
    config = TrainConfig(model="tiny", max_length=16, tiny=TinyModelConfig(num_hidden_layers=4))
    build_model(config, LABELS).save_pretrained(directory)
    load_tokenizer().save_pretrained(directory)
    return directory


def test_student_copies_embeddings_head_and_evenly_spread_layers(deep_teacher, tmp_path):
    import torch

    from tasks.models.build import load_classifier
    from tasks.models.compression import build_student
    from tasks.models.inference import predict

    teacher, tokenizer = load_classifier(deep_teacher)
    student = build_student(teacher, 2)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for student_index, teacher_index in ((0, 1), (1, 3)):  # 4 -> 2 keeps the 2nd and the top layer
        for (key, value), (_, reference) in zip(student.bert.encoder.layer[student_index].state_dict().items(),
                                                teacher.bert.encoder.layer[teacher_index].state_dict().items()):
            assert torch.equal(value, reference), key
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    embeddings = student.bert.embeddings.word_embeddings.weight
    assert embeddings.data_ptr() != teacher.bert.embeddings.word_embeddings.weight.data_ptr()  # a copy
    student.save_pretrained(tmp_path)  # safetensors round trip: same predictions after reload
    reloaded, _ = load_classifier(tmp_path)
    np.testing.assert_allclose(predict(reloaded, tokenizer, TEXTS, max_length=16).probabilities,
                               predict(student, tokenizer, TEXTS, max_length=16).probabilities, atol=1e-6)
    assert len(teacher.bert.encoder.layer) == 4  # the teacher is untouched


def test_student_shape_errors_and_narrow_student(deep_teacher):
    from tasks.models.build import load_classifier
    from tasks.models.compression import build_student
    from tasks.models.inference import predict

    teacher, tokenizer = load_classifier(deep_teacher)
    with pytest.raises(ValueError, match="within 1..4"):
        build_student(teacher, 5)
    narrow = build_student(teacher, 1, hidden_size=16)
    assert (narrow.config.hidden_size, narrow.config.num_hidden_layers) == (16, 1)
    assert predict(narrow, tokenizer, TEXTS, max_length=16).probabilities.shape == (len(TEXTS), len(LABELS))


def test_distillation_moves_the_student_towards_the_teacher(deep_teacher):
    import torch

    from tasks.models.build import load_classifier
    from tasks.models.compression import build_student, distill, teacher_logits

    teacher, tokenizer = load_classifier(deep_teacher)
    texts = [f"{word}{index} filler {word}" for index in range(24) for word in ("alpha", "beta", "gamma")]
    soft = teacher_logits(teacher, tokenizer, texts, max_length=16)
    student = build_student(teacher, 1, hidden_size=16)  # random init: far from the teacher

    def divergence() -> float:
        logits = torch.as_tensor(teacher_logits(student, tokenizer, texts, max_length=16))
        return float(torch.nn.functional.kl_div(logits.log_softmax(-1), torch.as_tensor(soft).log_softmax(-1),
                                                log_target=True, reduction="batchmean"))

    before = divergence()
    stats = distill(student, tokenizer, texts, soft.argmax(axis=1).tolist(), soft, max_length=16, epochs=8,
                    batch_size=8, learning_rate=5e-3, temperature=2.0, alpha=1.0)
    assert stats["steps"] == 8 * 9 and np.isfinite(stats["loss"])
    assert divergence() < 0.5 * before
    with pytest.raises(ValueError, match="alpha must be in"):
        distill(student, tokenizer, texts, [0] * len(texts), soft, max_length=16, alpha=1.5)


def test_pyfunc_serves_the_distilled_student(deep_teacher, tmp_path):
    import pandas as pd

    from tasks.models.build import load_classifier
    from tasks.models.compression import build_student, export_onnx, quantize_onnx_int8
    from tasks.models.inference import predict
    from tasks.models.serving import TextClassifier

    teacher, tokenizer = load_classifier(deep_teacher)
    student = build_student(teacher, 2)
    student.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    onnx_fp32 = export_onnx(student, tokenizer, tmp_path / "student.onnx")
    onnx_int8 = quantize_onnx_int8(onnx_fp32, tmp_path / "student.int8.onnx")
    expected = predict(student, tokenizer, TEXTS, max_length=16)
    cases = ((DISTILLED, {"student_model": str(tmp_path / "student")}, "BertForSequenceClassification"),
             (DISTILLED_ONNX_INT8, {"onnx_model": str(onnx_int8)}, "OnnxClassifier"))
    for variant, extra, expected_type in cases:
        served = TextClassifier()
        served.load_context(SimpleNamespace(artifacts={"hf_model": str(deep_teacher), **extra},
                                            model_config={"variant": variant, "max_length": 16}))
        assert type(served.model).__name__ == expected_type
        if variant == DISTILLED:
            assert served.model.config.num_hidden_layers == 2
        result = served.predict(None, pd.DataFrame({"text": TEXTS}))
        np.testing.assert_allclose(result["probability"], expected.probabilities.max(axis=1),
                                   atol=0.1 if "int8" in variant else 1e-5)


# ------------------------------------------------- the compress step on the model steps' two rounds


def test_int8_variant_is_re_evaluated_and_smaller(two_rounds):
    _, _, first, _ = two_rounds
    variant = CompressFacts.of(first["compress"]).variants["int8-dynamic"]
    assert 0 < variant["size_ratio"] < 1
    assert set(variant["macro_f1_delta"]) >= {"frozen", "fresh"}


def test_distilled_variants_are_trained_stored_safely_and_re_evaluated(two_rounds):
    _, store, first, _ = two_rounds
    manifest = first["compress"]
    variants = CompressFacts.of(manifest).variants
    for name in ("distilled", "distilled-onnx-int8"):
        row = variants[name]
        assert row["servable"] and set(row["macro_f1_delta"]) >= {"frozen", "fresh"}
        assert row["layers"] == 1 and row["teacher_layers"] == 2 and row["distill_rows"] > 0
    assert variants["distilled-onnx-int8"]["size_ratio"] < variants["onnx-int8"]["size_ratio"]
    student = store.local_path(manifest.output("distilled_model").uri)
    assert list(student.glob("*.safetensors")) and not list(student.glob("*.bin")) and not list(student.glob("*.pt"))
    assert store.local_path(manifest.output("distilled_onnx_int8").uri).suffix == ".onnx"
