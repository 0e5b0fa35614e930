"""``regrow drift --report``: a backtest as one self-contained HTML page, for people to look at.

Everything is inline (CSS and SVG; no script, no font, nothing fetched), so the page opens offline and can be
attached to a ticket. It gives the verdict on the whole file, the windows' verdicts when there are several,
and every feature (drifted ones first, the furthest past its threshold first) with its scores against their
thresholds and its reference and live histograms: each bin's share of the rows, its counts on hover.
"""

from __future__ import annotations

import html
import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from regrow.api.driftpolicy import DriftPolicySpec, DriftTestType
from regrow.drift.backtest import Window
from regrow.drift.policy import BELOW_IS_DRIFT
from regrow.drift.profile import FeatureProfile, Profile

REFERENCE, LIVE = "#4c78a8", "#f58518"  # the bars' colours: Tableau 10's blue and orange
PLOT_HEIGHT, LABELS_HEIGHT, LEFT = 150, 84, 44
MAX_WINDOWS = 500  # rows of the windows' table
DASH = "\u2013"  # an en dash, between a range's ends
STYLE = f"""
body {{ font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 24px auto; max-width: 1100px; padding: 0 16px }}
h1 {{ font-size: 22px; margin: 0 0 4px }} h2 {{ font-size: 17px; margin: 28px 0 6px }}
table {{ border-collapse: collapse; margin: 8px 0 }} td, th {{ padding: 3px 10px; border-bottom: 1px solid #ddd;
  text-align: left }} th {{ background: #f4f4f4 }} .num {{ text-align: right; font-variant-numeric: tabular-nums }}
.verdict {{ font-size: 16px; padding: 10px 14px; border-radius: 6px; margin: 12px 0 }}
.drift {{ background: #fde2e1; border-left: 6px solid #d62728 }} .quiet {{ background: #e3f1e1;
  border-left: 6px solid #2ca02c }} .unjudged {{ background: #eee; border-left: 6px solid #999 }}
.past {{ color: #b31b1b; font-weight: 600 }} .tag {{ font-size: 12px; padding: 1px 7px; border-radius: 9px;
  margin-left: 8px; vertical-align: 2px }} .tag.drifted {{ background: #d62728; color: #fff }}
.tag.stable {{ background: #ddd }} .meta {{ color: #555 }} .key {{ display: inline-block; width: 12px; height: 12px;
  margin: 0 4px 0 12px; vertical-align: -1px }} svg text {{ font-size: 11px; fill: #333 }}
section {{ border-top: 1px solid #ccc; margin-top: 18px }}
.ref {{ background: {REFERENCE} }} .live {{ background: {LIVE} }}
"""


@dataclass(frozen=True)
class Compared:
    """What the page says was compared: the profile's and the data's names as given, and the policy's."""

    profile: str
    data: str
    policy: str
    spec: DriftPolicySpec


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"


def edge_texts(edges: tuple[float, ...]) -> list[str]:
    """The edges with three significant digits, or as many more (up to six) as it takes to tell them apart.
    Edges equal to six digits bound a bin of one value (profiles give a frequent value a bin of its own)."""
    distinct = len({f"{edge:.6g}" for edge in edges})
    for digits in range(3, 7):
        texts = [f"{edge:.{digits}g}" for edge in edges]
        if len(set(texts)) == distinct:
            break
    return texts


def bin_labels(feature: FeatureProfile) -> list[str]:
    """Each bin's label as people read it: a numeric bin's range, a category's text."""
    if not feature.numeric:
        return feature.labels
    edges = edge_texts(feature.edges)
    ranges = [a if a == b else f"{a} {DASH} {b}" for a, b in itertools.pairwise(edges)]
    return [f"< {edges[0]}", *ranges, f"> {edges[-1]}", "missing"]


def _shown(feature: FeatureProfile, reference: npt.NDArray[np.int64], live: npt.NDArray[np.int64]) -> list[int]:
    """The bins drawn: every regular bin and category; out-of-range, other and missing bins when they hold rows."""
    regular = (
        range(1, len(feature.edges)) if feature.numeric else range(len(feature.categories))
    )  # numeric: past underflow, before overflow and missing
    extra = [i for i in range(len(reference)) if i not in regular and (reference[i] or live[i])]
    return sorted([*regular, *extra])


def histogram(feature: FeatureProfile, reference: npt.NDArray[np.int64], live: npt.NDArray[np.int64]) -> str:
    """An inline SVG: each shown bin's share of the reference rows and of the live rows, side by side."""
    shown, labels = _shown(feature, reference, live), bin_labels(feature)
    shares = [counts / max(int(counts.sum()), 1) for counts in (reference, live)]
    top = max(float(max(s[shown].max() for s in shares)), 1e-9)
    group = max(22, min(64, 760 // max(len(shown), 1)))
    width = LEFT + group * len(shown) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PLOT_HEIGHT + LABELS_HEIGHT}" '
        f'role="img" aria-label="{_e(feature.name)}: reference and live shares per bin">',
        f'<line x1="{LEFT}" y1="10" x2="{LEFT}" y2="{PLOT_HEIGHT + 10}" stroke="#999"/>',
        f'<line x1="{LEFT}" y1="{PLOT_HEIGHT + 10}" x2="{width - 6}" y2="{PLOT_HEIGHT + 10}" stroke="#999"/>',
        f'<text x="{LEFT - 4}" y="14" text-anchor="end">{top:.0%}</text>',
        f'<text x="{LEFT - 4}" y="{PLOT_HEIGHT + 10}" text-anchor="end">0%</text>',
    ]
    bar = (group - 6) / 2
    for slot, i in enumerate(shown):
        x = LEFT + slot * group + 3
        for k, (name, colour, counts) in enumerate((("reference", REFERENCE, reference), ("live", LIVE, live))):
            share = float(shares[k][i])
            height = PLOT_HEIGHT * share / top
            parts.append(
                f'<rect x="{x + k * bar:.1f}" y="{PLOT_HEIGHT + 10 - height:.1f}" width="{bar:.1f}" '
                f'height="{height:.1f}" fill="{colour}"><title>{_e(labels[i])}, {name}: {int(counts[i]):,} rows '
                f"({share:.1%})</title></rect>"
            )
        parts.append(
            f'<text transform="translate({x + bar:.1f},{PLOT_HEIGHT + 22}) rotate(-40)" '
            f'text-anchor="end">{_e(labels[i][:24])}</text>'
        )
    return "".join(parts) + "</svg>"


def _scores(window: Window, j: int) -> list[tuple[DriftTestType, float, float]]:
    """Feature ``j``'s (test, score, threshold), for the tests that apply to it."""
    result = window.result
    return [
        (test, float(values[j]), float(result.thresholds[test][j]))
        for test, values in result.scores.items()
        if math.isfinite(float(values[j]))
    ]


def _beyond(test: DriftTestType, score: float, threshold: float) -> float:
    """How far a score is past its threshold (above 1) or short of it, as a ratio: a distance above its
    threshold drifts; a p-value (chi-square's) below it."""
    if test in BELOW_IS_DRIFT:
        return threshold / max(score, 1e-300)
    return score / threshold if threshold > 0 else math.inf if score > 0 else 0.0


def _furthest(window: Window, j: int) -> float:
    return max((_beyond(*scored) for scored in _scores(window, j)), default=0.0)


def _verdict(window: Window, spec: DriftPolicySpec) -> tuple[str, str]:
    result = window.result
    if result.samples < spec.min_samples:
        return "unjudged", f"Not judged: {result.samples:,} rows, fewer than minSamples ({spec.min_samples:,})."
    drifted = f"{result.drifted_count} of {result.counted} features drifted"
    if result.breached:
        return "drift", f"Drift: {drifted}, at least driftShare ({spec.drift_share}) of them: a breach."
    return "quiet", f"No drift: {drifted}, fewer than driftShare ({spec.drift_share}) of them."


def _summary(profile: Profile, window: Window, order: list[int]) -> str:
    rows = []
    for j in order:
        cells = "; ".join(
            f'<span class="{"past" if _beyond(test, score, threshold) > 1 else ""}">{test.value} {_number(score)}'
            f"</span> ({'drift below' if test in BELOW_IS_DRIFT else 'threshold'} {_number(threshold)})"
            for test, score, threshold in _scores(window, j)
        )
        tag = "drifted" if window.result.drifted[j] else "stable"
        rows.append(
            f'<tr><td><a href="#f{j}">{_e(profile.features[j].name)}</a></td><td><span class="tag {tag}">{tag}'
            f"</span></td><td>{cells or 'no test applies'}</td></tr>"
        )
    return "<table><tr><th>feature</th><th>verdict</th><th>scores</th></tr>" + "".join(rows) + "</table>"


def _flag(on: bool, text: str) -> str:
    return f'<td class="past">{text}</td>' if on else "<td>&ndash;</td>"


def _windows(windows: list[Window]) -> str:
    if len(windows) < 2:
        return ""
    more = len(windows) - MAX_WINDOWS
    rows = "".join(
        f'<tr><td class="num">{w.index}</td><td class="num">{w.first:,} &ndash; {w.last:,}</td>'
        f'<td class="num">{w.result.samples:,}</td><td class="num">{w.result.drifted_count} of {w.result.counted}</td>'
        f"{_flag(w.result.breached, 'breached')}{_flag(w.drift_detected, 'drift detected')}</tr>"
        for w in windows[:MAX_WINDOWS]
    )
    rest = f"<p>and {more:,} windows more: the JSON lines give every one.</p>" if more > 0 else ""
    return ("<h2>Windows</h2><table><tr><th>window</th><th>rows</th><th>samples</th><th>drifted</th>"
            f"<th>breach</th><th>verdict (consecutiveBreaches)</th></tr>{rows}</table>{rest}")  # fmt: skip


def report(profile: Profile, whole: Window, windows: list[Window], compared: Compared) -> str:
    """The page for ``whole`` (every row of the file, checked at once) and, when the file was cut into
    several, each of ``windows``' verdicts."""
    order = sorted(range(len(profile.features)), key=lambda j: (not whole.result.drifted[j], -_furthest(whole, j)))
    kind, verdict = _verdict(whole, compared.spec)
    live = profile.split(whole.counts)
    sections = []
    for j in order:
        feature = profile.features[j]
        tag = "drifted" if whole.result.drifted[j] else "stable"
        sections.append(
            f'<section id="f{j}"><h2>{_e(feature.name)}<span class="tag {tag}">{tag}</span></h2>'
            f"{histogram(feature, np.asarray(feature.counts, dtype=np.int64), live[j])}</section>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {_e(compared.data)}</title>
<style>{STYLE}</style></head><body>
<h1>Drift report</h1>
<p class="meta">{whole.result.samples:,} rows of <b>{_e(compared.data)}</b> against the reference profile
<b>{_e(compared.profile)}</b> ({profile.rows:,} training rows), with {_e(compared.policy)}.</p>
<div class="verdict {kind}">{_e(verdict)}</div>
<p><span class="key ref"></span>reference (training data) <span class="key live"></span>live (this file):
each bar is a bin's share of its side's rows.</p>
{_summary(profile, whole, order)}
{_windows(windows)}
{"".join(sections)}
</body></html>
"""
