"""Evaluate on the model steps' two rounds: floors on the first, warm start and the champion comparison on the second, reruns reuse."""

from __future__ import annotations

from tasks import model_registry, register
from tasks.compress import CompressFacts
from tasks.evaluate import EvaluateFacts
from tasks.promote import PromoteFacts
from tasks.register import RegisterFacts
from tasks.train import TrainFacts


def test_first_round_trains_gates_on_floors_and_becomes_champion(two_rounds):
    _config, _, first, _ = two_rounds
    assert first["train"].metrics["steps"] > 0
    facts = EvaluateFacts.of(first["evaluate"])
    assert facts.champion_version is None
    gate = facts.gate
    assert gate.passed, gate.reasons
    # No champion: the floors and the lexical baseline fitted on the same train rows decide.
    assert {check.name.split(":")[0] for check in gate.checks} <= {"floor", "over_baseline"}
    assert any(check.name.startswith("floor:") for check in gate.checks)
    promoted = PromoteFacts.of(first["promote"])
    assert promoted.promoted is True
    assert promoted.champion == RegisterFacts.of(first["register"]).version == "1"


def test_second_round_warm_starts_replays_and_compares_with_champion(two_rounds):
    config, _, _first, second = two_rounds
    assert TrainFacts.of(second["train"]).champion_version == "1"
    assert second["train"].metrics["rows_replay"] > 0
    facts = EvaluateFacts.of(second["evaluate"])
    assert facts.champion_version == "1"
    assert "old" in facts.gate.checks[-1].name or any(
        check.name.startswith("non_inferiority:") for check in facts.gate.checks)
    champion = model_registry.version_by_alias(config, model_registry.CHAMPION)
    if CompressFacts.of(second["compress"]).gate.passed:
        assert str(champion.version) == "2"
        assert str(model_registry.version_by_alias(config, model_registry.PREVIOUS).version) == "1"
    else:
        assert str(champion.version) == "1"


def test_rerun_is_a_no_op_that_returns_the_same_manifest(two_rounds):
    config, store, first, _ = two_rounds
    again = register.run(config, {k: first[k] for k in ("train", "evaluate", "compress", "validate", "clean")},
                         run_id="run-1", store=store, logical_date="2026-11-01")
    assert again.reused and again.fingerprint == first["register"].fingerprint
    client = model_registry.client(config)
    assert len(client.search_model_versions("name = 'unit-model'")) == 2
