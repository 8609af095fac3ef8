"""The report's first section: what the study decided, how sure that is, and what to check."""

from __future__ import annotations

import html

import optuna

from tuner.report._quantization import Int8Result, int8_result
from tuner.report._sections import SECTIONS, Section, metric_label, trial_label
from tuner.search.study import best_trials, metric_names
from tuner.search.study.inspect import still_improving
from tuner.search.verdict import Verdict, decide


def decision(study: optuna.Study) -> Section:
    if len(study.directions) > 1:
        front = best_trials(study)
        names = ", ".join(metric_label(n) for n in metric_names(study))
        text = (
            f"<p>No single winner: {len(front)} trials form the Pareto front over {names}: "
            + ", ".join(html.escape(trial_label(t)) for t in front)
            + ".</p>"
        )
        return Section("decision", SECTIONS["decision"], html=text)
    verdict = decide(study)
    if verdict is None:
        return Section("decision", SECTIONS["decision"], note="no completed trial yet")
    return Section("decision", SECTIONS["decision"], html=_paragraphs(study, verdict))


def _paragraphs(study: optuna.Study, verdict: Verdict) -> str:
    best = verdict.best
    metric = metric_label(verdict.metric)
    score = f"{metric} {best.mean:.4f}"
    if best.score:  # the interval of this same value, not of one seed's run
        score += f", 95 % interval {best.score.interval_text} ({best.score.method})"
    if len(best.runs) > 1:
        runs = ", ".join(f"{v:.4f}" for v in best.values)
        score += f"; the mean of {len(best.runs)} seeds ({runs})"
    parts = [
        f"<p class='decision'><b>Best: {html.escape(trial_label(best.trial))}</b>: "
        f"{html.escape(score)}.</p>",
        f"<p><b>Verdict:</b> {html.escape(verdict.text)}.</p>",
    ]
    details = [
        f"#{s.trial.number}: {d.observed:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
        for s, d in verdict.compared
        if d is not None
    ]
    if details:
        parts.append(
            "<p class='note'>Lead of the best over each runner-up (observed difference, 95 % "
            "interval; paired over the same images and, where confirmed, resampling seeds): "
            + "; ".join(details)
            + "</p>"
        )
    result = int8_result(study)
    if result is not None:
        parts.append(f"<p><b>INT8:</b> {html.escape(int8_summary(result))}</p>")
    rising = [
        s.trial.number for s, _ in [(best, None), *verdict.compared] if still_improving(s.trial)
    ]
    if rising:
        parts.append(
            "<p class='warn'>Not converged: "
            + ", ".join(f"#{n}" for n in rising)
            + " still improved at the last epoch; more epochs may change the ranking.</p>"
        )
    return "".join(parts)


def int8_summary(result: Int8Result) -> str:
    """The chosen INT8 model against FP32 in one sentence: its change in mIoU signed as a gain
    or a loss, and set against the noise: the 95 % interval (over validation images) of the
    FP32 run it was quantized from."""
    text = (
        f"{result.name} of trial {result.trial}: mIoU {result.miou:.4f} against FP32's "
        f"{result.fp32_miou:.4f} in the same run, {result.change_points:+.2f} points "
        f"({result.direction})"
    )
    if result.interval is not None:
        low, high = result.interval
        where = "inside" if result.inside_noise else "outside"
        text += (
            f", {where} the noise: the FP32 run's 95 % interval over validation images is "
            f"[{low:.4f}, {high:.4f}]"
        )
    return (
        text + f"; {result.speedup:.2f}x the FP32 speed (both measured in that run); "
        f"{result.size_ratio:.0%} of its size (tensor bytes, uncompressed, counted alike for "
        "both; comparison.json also has the gzipped sizes)."
    )
