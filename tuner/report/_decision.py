"""The report's first section: what the study decided, how sure that is, and what to check."""

from __future__ import annotations

import html

import optuna

from tuner.report._sections import SECTIONS, Section, metric_label, trial_label
from tuner.search import attrs
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
    if best.ci:
        score += f" ± {(best.ci[1] - best.ci[0]) / 2:.4f} (95 % interval over validation images)"
    if len(best.runs) > 1:
        runs = ", ".join(f"{v:.4f}" for v in best.values)
        score += f"; mean of {len(best.runs)} seeds ({runs})"
    parts = [
        f"<p class='decision'><b>Best: {html.escape(trial_label(best.trial))}</b>: {score}.</p>",
        f"<p><b>Verdict:</b> {html.escape(verdict.text)}.</p>",
    ]
    details = [
        f"#{s.trial.number}: {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
        for s, d in verdict.compared
        if d is not None
    ]
    if details:
        parts.append(
            "<p class='note'>Lead of the best over each runner-up (mean, 95 % interval; paired "
            "over the same images and, where confirmed, over seeds): " + "; ".join(details) + "</p>"
        )
    report = study.user_attrs.get(attrs.QUANTIZATION)
    if report:
        chosen = next(c for c in report["candidates"] if c["name"] == report["chosen"])
        fp32 = report["fp32"]
        parts.append(
            f"<p><b>INT8:</b> {html.escape(chosen['name'])} of trial "
            f"{report.get('extras', {}).get('trial')}: mIoU {chosen['miou']:.4f} "
            f"({(fp32['miou'] - chosen['miou']) * 100:+.2f} points), "
            f"{fp32['latency_ms'] / chosen['latency_ms']:.2f}x the FP32 speed, "
            f"{chosen['size_bytes'] / fp32['size_bytes']:.0%} of its size.</p>"
        )
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
