"""The bench's answer: one table (ours beside each reference) and the plots.

Every row holds our figure, the reference it is compared with (measured in the same run, or
the issue's target where there is nothing to measure), their ratio, and whether the target is
met. The table is printed and written as Markdown; the plots are PNG files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

TABLE_FILE = "results.md"
JSON_FILE = "results.json"
PLOTS = ("latency.png", "throughput.png", "cpu.png")


@dataclass(frozen=True)
class Row:
    what: str
    ours: float
    unit: str
    reference: float
    reference_name: str  # what the reference is: "bare app", "target"...
    target: str  # the target, as a sentence fragment: "≥ 35 % of the bare app"
    met: bool | None  # None: nothing to meet (a figure for context)

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else math.nan


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f} {unit}".strip()


def markdown(rows: Sequence[Row], conditions: str) -> str:
    lines = [
        "| what | ours | reference | ours / reference | target | met |",
        "|---|---:|---:|---:|---|:-:|",
    ]
    for row in rows:
        met = "-" if row.met is None else "yes" if row.met else "**no**"
        ratio = "-" if math.isnan(row.ratio) else f"{row.ratio:.0%}"
        reference = f"{_number(row.reference, row.unit)} ({row.reference_name})"
        lines.append(
            f"| {row.what} | {_number(row.ours, row.unit)} | {reference} | {ratio} "
            f"| {row.target} | {met} |"
        )
    return "\n".join(lines) + f"\n\n{conditions}\n"


def write(
    folder: Path,
    rows: Sequence[Row],
    conditions: str,
    raw: Mapping[str, object],
) -> str:
    """Write the table (Markdown) and the raw figures (JSON); return the table."""
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, conditions)
    (folder / TABLE_FILE).write_text(table)
    document = {"rows": [asdict(r) for r in rows], "conditions": conditions, "raw": raw}
    (folder / JSON_FILE).write_text(json.dumps(document, indent=2, default=str) + "\n")
    return table


def plot_latency(path: Path, series: Mapping[str, Sequence[float]]) -> None:
    """Latency distributions (seconds) as cumulative curves on a log scale."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, values in series.items():
        if not values:
            continue
        ordered = sorted(v * 1000 for v in values)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, fractions, where="post", label=f"{name} (n={len(ordered)})")
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("fraction of requests at or under")
    axes.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    axes.set_title("Latency distribution")
    axes.grid(True, which="both", linewidth=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_throughput(
    path: Path, offered: Sequence[float], achieved: Sequence[float], p99_ms: Sequence[float]
) -> None:
    """End-to-end purchases per second against the offered rate, with propagation p99."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    top = max([*offered, *achieved, 1.0])
    axes.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--", label="keeping up")
    axes.plot(offered, achieved, marker="o", label="purchases propagated per second")
    axes.set_xlabel("offered purchases per second")
    axes.set_ylabel("purchases per second, end to end")
    latency = axes.twinx()
    latency.plot(offered, p99_ms, marker="s", color="tab:red", label="propagation p99 (ms)")
    latency.set_ylabel("propagation p99 (ms)")
    latency.set_yscale("log")
    handles = axes.get_legend_handles_labels()[0] + latency.get_legend_handles_labels()[0]
    axes.legend(handles=handles, loc="upper left", fontsize="small")
    axes.set_title("Throughput against offered rate")
    axes.grid(True, linewidth=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_cpu(
    path: Path,
    ms_per_purchase: Mapping[str, float],
    target_ms: float,
    reference: Mapping[str, float],
) -> None:
    """CPU milliseconds per purchase, by process, largest first; beside each, the reference's
    (the same flow wired bare) where it has that process."""
    ordered = sorted(ms_per_purchase.items(), key=lambda item: item[1])
    rows = range(len(ordered))
    height = 0.4
    figure, axes = plt.subplots(figsize=(8, 4.5))
    ours = [ms for _, ms in ordered]
    axes.barh([i + height / 2 for i in rows], ours, height, label="ours")
    bare = [reference.get(name, 0.0) for name, _ in ordered]
    axes.barh([i - height / 2 for i in rows], bare, height, label="the same flow wired bare")
    for i, (ms, base) in enumerate(zip(ours, bare, strict=True)):
        axes.text(ms, i + height / 2, f" {ms:.2f}", va="center", fontsize="small")
        if base:
            axes.text(base, i - height / 2, f" {base:.2f}", va="center", fontsize="x-small")
    axes.set_yticks(list(rows), [name for name, _ in ordered])
    axes.set_xlabel("CPU ms per purchase fully propagated")
    axes.set_title(
        f"CPU per purchase by process: {sum(ours):.1f} ms in all, wired bare "
        f"{sum(reference.values()):.1f} ms (target {target_ms:g} ms)"
    )
    axes.legend(loc="lower right")
    axes.grid(True, axis="x", linewidth=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
