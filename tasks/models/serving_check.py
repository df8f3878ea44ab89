"""The serving check: what a served model answered vs the serving sample compress wrote (the texts, and the
labels and probabilities the chosen variant gave them in the compress step). register runs it on the
registered version in a fresh process; `freshet serve` runs it on every version before swapping it in.
"""

from __future__ import annotations

from typing import Any


def compare_serving(sample: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """Served predictions vs the sample's expected ones: {passed, rows, max_abs_diff, mismatches, message}."""
    tolerance = float(sample["tolerance"])
    rows = len(sample["texts"])
    if len(served["labels"]) != rows:
        return {"passed": False, "rows": rows, "max_abs_diff": float("nan"), "mismatches": [],
                "message": f"served {len(served['labels'])} predictions for {rows} sample texts"}
    mismatches, max_diff = [], 0.0
    for position, (expected_label, probabilities, label, probability) in enumerate(zip(
            sample["labels"], sample["probabilities"], served["labels"], served["probabilities"])):
        top = sorted(probabilities, reverse=True)
        near_tie = len(top) > 1 and top[0] - top[1] <= tolerance  # either label is a faithful answer
        difference = abs(max(probabilities) - probability)
        max_diff = max(max_diff, difference)
        if (label != expected_label and not near_tie) or difference > tolerance:
            row_id = sample.get("ids", [None] * rows)[position]
            mismatches.append({"row": position, "id": row_id, "expected": expected_label, "served": label,
                               "expected_probability": max(probabilities), "served_probability": probability})
    message = "reproduced" if not mismatches else (
        f"{len(mismatches)} of {rows} sample rows differ (tolerance {tolerance:g}); first: row id "
        f"{mismatches[0]['id']!r} expected {mismatches[0]['expected']} p={mismatches[0]['expected_probability']:.6f}, "
        f"served {mismatches[0]['served']} p={mismatches[0]['served_probability']:.6f}")
    return {"passed": not mismatches, "rows": rows, "max_abs_diff": max_diff, "mismatches": mismatches[:10],
            "message": message}
