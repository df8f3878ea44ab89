"""The monitor's report: per version, four plots (predicted labels, confidence, text length, calibration)
and one table of checks, as a PNG per version and a self-contained HTML page (images embedded)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.monitoring.drift import quantile_edges
from tasks.monitoring.reference import Reference

STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
         "text-align:left;vertical-align:top}th{background:#f3f3f3}.passed{color:#1a7f37}"
         ".failed{color:#cf222e;font-weight:bold}.skipped{color:#777}")


def version_png(reference: Reference, production: pd.DataFrame, version: str, path: Path, bins: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = reference.rows
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    labels = reference.label_names
    positions = np.arange(len(labels))
    ref_share = ref["predicted"].value_counts(normalize=True).reindex(labels, fill_value=0)
    prod_share = production["label"].value_counts(normalize=True).reindex(labels, fill_value=0)
    axis = axes[0][0]
    axis.bar(positions - 0.2, ref_share.to_numpy(), width=0.4, label=f"reference ({len(ref)})")
    axis.bar(positions + 0.2, prod_share.to_numpy(), width=0.4, label=f"production ({len(production)})")
    axis.set_xticks(positions, labels, rotation=45, ha="right", fontsize=7)
    axis.set_title("predicted label share")
    axis.legend(fontsize=7)

    axis = axes[0][1]
    edges = np.linspace(0, 1, 21)
    axis.hist(ref["confidence"], bins=edges, density=True, alpha=0.5, label="reference")
    axis.hist(production["confidence"], bins=edges, density=True, alpha=0.5, label="production")
    for edge in quantile_edges(ref["confidence"].to_numpy(), bins):
        axis.axvline(edge, color="#999", linewidth=0.5)
    axis.set_title("top-1 confidence (PSI bins: grey)")
    axis.legend(fontsize=7)

    axis = axes[1][0]
    lengths = production["text"].dropna().str.len() if "text" in production else pd.Series(dtype=float)
    top = max(float(ref["length"].max() or 1), float(lengths.max()) if len(lengths) else 1.0)
    edges = np.linspace(0, top, 31)
    axis.hist(ref["length"], bins=edges, density=True, alpha=0.5, label="reference")
    if len(lengths):
        axis.hist(lengths, bins=edges, density=True, alpha=0.5, label="production")
    axis.set_title("text length (characters)")
    axis.legend(fontsize=7)

    axis = axes[1][1]
    grid = np.linspace(0, 1, 101)
    axis.plot(grid, reference.calibration.calibrate(grid), label="isotonic calibration (top-1)")
    buckets = np.clip((ref["confidence"].to_numpy() * 10).astype(int), 0, 9)
    observed = [(float(ref["confidence"][buckets == b].mean()), float(ref["correct"][buckets == b].mean()))
                for b in range(10) if (buckets == b).any()]
    axis.scatter([x for x, _ in observed], [y for _, y in observed], s=14, label="reference accuracy by decile", color="C1")
    axis.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8)
    axis.set_xlabel("confidence")
    axis.set_ylabel("P(correct)")
    axis.set_title("top-1 confidence vs accuracy on the reference")
    axis.legend(fontsize=7)
    figure.suptitle(f"version {version}: production vs its reference")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def render_html(title: str, verdict: str, versions: Mapping[str, Mapping[str, Any]], pictures: Mapping[str, Path],
                notes: Sequence[str]) -> str:
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
              f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p><b>{html.escape(verdict)}</b></p>")]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    for version, result in versions.items():
        parts.append(f"<h2>version {html.escape(version)}: {result.get('rows', 0)} predictions</h2>")
        if result.get("status") != "judged":
            parts.append(f"<p class='skipped'>{html.escape(str(result.get('reason')))}</p>")
            continue
        parts.append("<table><tr><th>check</th><th>bound</th><th>observed</th><th>status</th><th>detail</th></tr>")
        for check in result["checks"]:
            parts.append(f"<tr><td>{html.escape(check['name'])}</td><td>monitor.{check['setting']} = "
                         f"{_cell(check['bound'])}</td><td>{_cell(check['value'])}</td>"
                         f"<td class='{check['verdict']}'>{check['verdict']}</td><td>{html.escape(check['detail'])}</td></tr>")
        parts.append("</table><table><tr><th>measure</th><th>value</th></tr>")
        for key, value in result["measures"].items():
            parts.append(f"<tr><td>{html.escape(key)}</td><td>{_cell(value)}</td></tr>")
        parts.append("</table>")
        if version in pictures:
            encoded = base64.b64encode(pictures[version].read_bytes()).decode()
            parts.append(f"<img alt='version {html.escape(version)}' src='data:image/png;base64,{encoded}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
