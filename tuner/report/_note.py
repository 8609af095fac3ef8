"""The study's note in optuna-dashboard (markdown): what the study decided, in the same numbers
as `tuner best` and the report, where the dashboard otherwise shows only raw attributes (JSON
cut at 1,024 characters, YAML without its line breaks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

from tuner.core.text import short
from tuner.report._provenance import provenance
from tuner.report._quantization import int8_result
from tuner.report._sections import metric_label
from tuner.search import attrs
from tuner.search.leaderboard import leaderboard_rows
from tuner.search.study import best_trials, metric_names, state_counts
from tuner.search.verdict import Verdict, decide

LEADERBOARD_ROWS = 10  # the note is re-sent with every poll of the dashboard: keep it short


def study_note(study: optuna.Study, links: Sequence[tuple[str, str]] = ()) -> str:
    """The note: headline and verdict (or the Pareto front), leaderboard, INT8 result, search
    space and `links` ((name, url) of the study's report artifacts)."""
    counts = state_counts(study.get_trials(deepcopy=False))
    summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    parts = [f"## Study `{study.study_name}`", f"Trials: {summary or 'none yet'}."]
    if len(study.directions) > 1:
        parts += _pareto(study)
    else:
        verdict = decide(study)
        parts += _decision(verdict) if verdict else ["No completed trial yet."]
    parts += _leaderboard(study)
    parts += _quantization(study, attrs.record(study, attrs.QUANTIZATION))
    parts += ["### Where these numbers come from"]
    parts += ["\n".join(f"- **{name}**: {value}" for name, value in provenance(study).rows())]
    space = attrs.record(study, attrs.SEARCH_SPACE)
    if space:
        fence = "~~~" if "```" in space else "```"
        parts += ["### Search space", f"{fence}yaml\n{space.rstrip()}\n{fence}"]
    if links:
        parts += ["### Files", "\n".join(f"- [{name}]({url})" for name, url in links)]
    return "\n\n".join(parts) + "\n"


def _decision(verdict: Verdict) -> list[str]:
    """The headline `tuner best` prints: the mean over seeds and the interval of that mean."""
    best = verdict.best
    metric = metric_label(verdict.metric)
    seeds = len(best.runs)
    runs = ", ".join(f"{v:.4f}" for v in best.values)
    of = f"mean of {seeds} seeds: {runs}" if seeds > 1 else "one seed"
    headline = f"**Best: #{best.trial.number}**: {metric} **{best.mean:.4f}** ({of})"
    if best.score is not None:
        headline += f"; 95 % interval {best.score.interval_text} ({best.score.method})"
    else:
        headline += "; no interval (no per-image counts recorded)"
    params = ", ".join(f"`{k}={short(v)}`" for k, v in best.trial.params.items())
    lines = [headline + ".", f"Params: {params or 'none'}.", f"**Verdict:** {verdict.text}."]
    compared = [(s, d) for s, d in verdict.compared if d is not None]
    if compared:
        rows = [
            [
                f"#{s.trial.number}",
                f"{s.mean:.4f}",
                f"{d.observed:+.4f}",
                f"[{d.low:+.4f}, {d.high:+.4f}]",
                "yes" if d.separable else "no",
            ]
            for s, d in compared
        ]
        lines.append(
            f"Lead of #{best.trial.number} over each runner-up (observed difference, 95 % "
            "interval; paired by image, and over seeds where confirmed):\n\n"
            + _table(["runner-up", metric, "lead", "95 % interval", "separable"], rows)
        )
    return lines


def _pareto(study: optuna.Study) -> list[str]:
    front = best_trials(study)
    if not front:
        return ["No completed trial yet."]
    names = metric_names(study)
    rows = [
        [f"#{t.number}", *(_cell(v) for v in t.values), _params(t.params)]
        for t in sorted(front, key=lambda t: t.number)
    ]
    labels = [metric_label(n) for n in names]
    return [
        f"**No single winner:** {len(front)} trials form the Pareto front over "
        f"{', '.join(labels)}.",
        _table(["trial", *labels, "params"], rows),
    ]


def _leaderboard(study: optuna.Study) -> list[str]:
    rows, headers = leaderboard_rows(study, limit=LEADERBOARD_ROWS)
    if not rows:
        return []
    total = len(study.get_trials(deepcopy=False))
    more = f" (first {len(rows)} of {total} trials)" if total > len(rows) else ""
    return [f"### Leaderboard{more}", _table(headers, [[_cell(v) for v in r] for r in rows])]


def _quantization(study: optuna.Study, report: dict[str, Any] | None) -> list[str]:
    """The INT8 result in words (`Int8Result`, as the report states it), and whether the
    change in mIoU is inside the FP32 run's own 95 % interval."""
    if not report:
        return []
    result = int8_result(study)
    if result is None:
        return ["### INT8", f"No INT8 candidate chosen: {report.get('reason', '')}".rstrip(": ")]
    of = f" of trial #{result.trial}" if result.trial is not None else ""
    derived = " (derived, not measured)" if result.derived else ""
    lines = [
        "### INT8",
        f"**{result.name}**{of}: mIoU {result.miou:.4f} vs FP32 {result.fp32_miou:.4f}, "
        f"{result.change_points:+.2f} points of mIoU ({result.direction}); "
        f"{result.latency_ms:.1f} ms vs {result.fp32_latency_ms:.1f} ms, "
        f"{result.speedup:.2f}x the FP32 speed{derived}; "
        f"{result.size_ratio:.0%} of the FP32 size.",
    ]
    if result.inside_noise:
        low, high = result.interval
        lines.append(
            f"The INT8 mIoU lies inside the FP32 run's 95 % interval [{low:.4f}, "
            f"{high:.4f}]: the {result.direction} is within the noise of the validation images."
        )
    if result.reason:
        lines.append(f"Why: {result.reason}")
    return lines


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short(v)}" for k, v in params.items())


def _cell(value: Any) -> str:
    """A table cell: floats at 4 decimals, nothing for None, no stray pipes or newlines."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    lines.append("|" + "---|" * len(headers))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def headline(study: optuna.Study) -> str | None:
    """One line for the dashboard's front page, beside its own "Best Trial" card (which shows
    Optuna's best single trial, unrounded): the headline value, its interval and the verdict."""
    if len(study.directions) > 1:
        return None
    verdict = decide(study)
    if verdict is None:
        return None
    best = verdict.best
    seeds = len(best.runs)
    text = (
        f"#{best.trial.number}: {best.mean:.4f} (mean of {seeds} seeds)"
        if seeds > 1
        else (f"#{best.trial.number}: {best.mean:.4f} (one seed)")
    )
    if best.score is not None:
        text += f", 95 % interval {best.score.interval_text}"
    return f"{text}; {verdict.text}. The note has the details."
