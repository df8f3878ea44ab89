"""One Check type with one vocabulary: the gate, validate's batch checks and the monitor judge alike. Pure, no I/O."""

from __future__ import annotations

from types import SimpleNamespace

from tasks import monitor
from tasks.checks import Check, failed
from tasks.config import GatePolicy, ValidateConfig
from tasks.gate_policy import judge_candidate, judge_compressed
from tasks.validation.batch_checks import duplicate_check, problem_of
from tasks.validation.expectations import UNIQUE_TEXTS_EXPECTATION, ExpectationOutcome


def test_the_gate_validate_and_the_monitor_fail_a_check_in_the_same_words():
    gate = judge_candidate(GatePolicy(floors={"frozen.macro_f1": 0.5}), {"frozen": {"macro_f1": 0.3, "rows": 50}}, None)
    duplicates = ExpectationOutcome(UNIQUE_TEXTS_EXPECTATION, "text", False, (), observed=0.5)
    batch = duplicate_check([duplicates], SimpleNamespace(validate_=ValidateConfig()), rows=10)
    drift = monitor.check("label_psi", "max_label_psi", 0.4, 0.2, "vs the reference")
    floor = monitor.check("estimated_macro_f1", "min_estimated_macro_f1", 0.5, 0.6, floor=True)
    checks = [*gate.checks, batch, drift, floor]
    assert all(isinstance(check, Check) for check in checks) and failed(checks) == checks
    assert gate.reasons == [gate.checks[0].detail] and not gate.passed
    assert (batch.value, batch.comparison, batch.setting) == (0.5, "<=", "max_duplicate_fraction")
    assert (drift.comparison, floor.comparison) == ("<=", ">=")
    assert monitor.problem_of(floor) == "estimated_macro_f1 0.500 < monitor.min_estimated_macro_f1=0.6"
    assert problem_of(batch).startswith("duplicate_fraction 0.500 > validate.max_duplicate_fraction=0.2 (")


def test_what_cannot_be_judged_is_skipped_not_passed():
    assert monitor.check("label_psi", "max_label_psi", 0.4, None).verdict == "skipped"
    assert monitor.check("real_f1_drop", "max_real_f1_drop", float("nan"), 0.1).verdict == "skipped"
    assert monitor.check("label_psi", "max_label_psi", 0.1, 0.2).verdict == "passed"
    empty = judge_compressed(GatePolicy(), {"frozen": {"macro_f1": None}}, {"frozen": {"macro_f1": 0.8}}, "int8")
    assert [check.verdict for check in empty.checks] == ["skipped"] and empty.passed
