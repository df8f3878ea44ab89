"""Promote and roll back: check-and-set on the champion alias, who and why recorded."""

from __future__ import annotations

import pytest

from tasks import model_registry, promote
from tasks.manifest import StepError
from tasks.register import RegisterFacts


def test_promotion_refuses_when_champion_changed_since_the_gate(two_rounds):
    config, _, first, _ = two_rounds
    current = model_registry.version_by_alias(config, model_registry.CHAMPION).version
    with pytest.raises(StepError, match="refusing"):
        promote.move_champion(config, RegisterFacts.of(first["register"]).version if current != "1" else "2",
                              expected_champion="not-the-champion", reason="test")


def test_rollback_moves_champion_back_and_records_who_and_why(two_rounds, capsys):
    from tasks.cli import main

    config, _, _, _ = two_rounds
    client = model_registry.client(config)
    name = config.mlflow.model_name
    client.set_registered_model_alias(name, model_registry.CHAMPION, "2")
    client.set_registered_model_alias(name, model_registry.PREVIOUS, "1")
    config_path = config.artifact_root + "/../rollback.yaml"
    import yaml

    with open(config_path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle)
    assert main(["rollback", "--config", config_path, "--who", "oncall", "--why", "bad outputs in prod"]) == 0
    assert str(model_registry.version_by_alias(config, model_registry.CHAMPION).version) == "1"
    assert model_registry.version_by_alias(config, model_registry.PREVIOUS) is None
    assert "oncall: bad outputs in prod" in client.get_model_version(name, "2").tags["freshet.rolled_back"]
    assert main(["rollback", "--config", config_path, "--why", "again"]) == 2
    assert "needs both a champion and a previous" in capsys.readouterr().err
