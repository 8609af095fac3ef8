"""Optuna's own figures (history, importances, parallel coordinates, Pareto front) where they
say something for a study, with what Optuna leaves out put back: pruned trials in the history,
conditional params that a trial lacked."""

from __future__ import annotations

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from tuner.report._sections import SECTIONS, Section, metric_label, titled
from tuner.search.study import metric_names
from tuner.search.study.inspect import stopped_at


def optuna_figures(study: optuna.Study) -> list[Section]:
    """History always; importances and parallel coordinates only when two or more parameters
    vary (with one, they are a single bar and a restatement of the comparison); the Pareto
    front of a multi-objective study."""
    vis = optuna.visualization
    names = metric_names(study)
    multi = len(study.directions) > 1
    varied = {p for t in study.get_trials(deepcopy=False) for p in t.params}
    target = {"target": (lambda t: t.values[0])} if multi else {}
    makers = {
        "history": lambda: vis.plot_optimization_history(
            study, target_name=metric_label(names[0]), **target
        )
    }
    if len(varied) >= 2:
        complete = with_absent_params(study)
        makers["importances"] = lambda: vis.plot_param_importances(
            complete, target_name=metric_label(names[0]), **target
        )
        makers["parallel"] = lambda: vis.plot_parallel_coordinate(
            complete, target_name=metric_label(names[0]), **target
        )
    if multi:
        labels = [metric_label(n) for n in names]
        makers["pareto"] = lambda: vis.plot_pareto_front(study, target_names=labels)
    sections = []
    for key, make in makers.items():
        try:
            figure = make()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            sections.append(Section(key, SECTIONS[key], note=f"not available yet: {exc}"))
            continue
        note = with_pruned_trials(figure, study) if key == "history" else ""
        sections.append(
            Section(key, SECTIONS[key], figure=titled(figure, SECTIONS[key]), note=note)
        )
    return sections


def with_pruned_trials(history: go.Figure, study: optuna.Study) -> str:
    """Optuna's history draws completed trials only; a pruned trial is part of what the search
    spent, so it is drawn too, at the score it had when it stopped (fewer epochs: not
    comparable with the completed ones, hence its own marker). Returns the figure's note."""
    pruned = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if stopped_at(t) is not None
    ]
    if not pruned:
        return ""
    history.add_trace(
        go.Scatter(
            x=[t.number for t in pruned],
            y=[t.intermediate_values[stopped_at(t)] for t in pruned],
            mode="markers",
            marker={"symbol": "x", "size": 9, "color": "#999"},
            name="pruned (score when stopped)",
            text=[f"#{t.number} pruned after epoch {stopped_at(t)}" for t in pruned],
        )
    )
    return (
        f"{len(pruned)} pruned trials are drawn as grey crosses at the score they had when they "
        "stopped: fewer epochs, so below the completed ones by construction."
    )


ABSENT = "n/a"


def with_absent_params(study: optuna.Study) -> optuna.Study:
    """The study's finished trials in memory, with each conditional categorical param that a
    trial did not have (lora_rank where adapter is none) set to "n/a". Optuna's parallel
    coordinates skip a trial that lacks any param and its importances use only the params every
    trial has, so without this a conditional space loses either its baseline trials or the
    dimensions that make it conditional."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    names = {p for t in trials for p in t.params}
    if all(set(t.params) == names for t in trials):
        return study
    choices: dict[str, list] = {}
    for trial in trials:
        for name, dist in trial.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                choices.setdefault(name, [*dist.choices, ABSENT])
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        filled = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for trial in trials:
        params, dists = dict(trial.params), dict(trial.distributions)
        for name in choices:
            params.setdefault(name, ABSENT)
            dists[name] = optuna.distributions.CategoricalDistribution(choices[name])
        filled.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, values=trial.values)
        )
    return filled
