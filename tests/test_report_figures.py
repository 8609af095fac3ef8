"""The report's figures on hand-made studies: what each one draws, marks and says."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner.report._figures import class_heatmap
from tuner.report._optuna_figures import optuna_figures
from tuner.report._quantization import latency_front
from tuner.search import attrs

LOSSES = CategoricalDistribution(["ce", "dice", "focal"])


def trial(loss, value, latency=40.0, state=TrialState.COMPLETE, per_class=None):
    history = {1: value - 0.1, 2: value}
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"loss": loss},
        distributions={"loss": LOSSES},
        intermediate_values=history,
        user_attrs={
            attrs.LATENCY_MS: latency,
            "val_miou": value,
            "val_per_class_iou": per_class or [value] * 18 + [None],  # no `bicycle` pixel
        },
    )


def study_of(*trials) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for t in trials:
        study.add_trial(t)
    return study


def test_history_draws_pruned_trials_at_their_last_score():
    study = study_of(
        trial("ce", 0.5), trial("dice", 0.3, state=TrialState.PRUNED), trial("focal", 0.4)
    )
    history = next(s for s in optuna_figures(study) if s.key == "history")
    pruned = [t for t in history.figure.data if t.name == "pruned (score when stopped)"]
    assert len(pruned) == 1 and list(pruned[0].x) == [1] and list(pruned[0].y) == [0.3]
    assert "1 pruned trials" in history.note


def test_heatmap_marks_pruned_rows_and_explains_blank_columns():
    study = study_of(trial("ce", 0.5), trial("dice", 0.3, state=TrialState.PRUNED))
    section = class_heatmap(study)
    rows = list(section.figure.data[0].y)
    assert rows[0].endswith("loss=ce") and rows[1].endswith("(pruned after epoch 2)")
    assert "Blank columns (bicycle)" in section.note and "pruned" in section.note


def test_one_architecture_is_said_in_words_and_int8_is_drawn_where_it_was_measured():
    one = study_of(trial("ce", 0.5), trial("dice", 0.4), trial("focal", 0.45))
    section = latency_front(one)
    assert section.figure is None
    assert "All 3 completed trials share one architecture, so one latency: 40.0 ms" in section.html

    two = study_of(trial("ce", 0.5, latency=40.0), trial("dice", 0.4, latency=20.0))
    attrs.set_record(
        two,
        attrs.QUANTIZATION,
        {
            "extras": {
                "top": [
                    {
                        "trial": 0,
                        "int8_miou": 0.49,
                        "latency_ms": 31.0,
                        "fp32_miou": 0.5,
                        "fp32_latency_ms": 36.0,
                    }
                ]
            }
        },
    )
    figure = latency_front(two).figure
    traces = {t.name: (list(t.x), list(t.y)) for t in figure.data}
    # As measured in tuner quantize's run: no rescaling onto the search's 40 ms.
    assert traces["INT8 in tuner quantize's run"] == ([31.0], [0.49])
    assert traces["FP32 in tuner quantize's run"] == ([36.0], [0.5])
    assert traces["their front"] == ([20.0, 40.0], [0.4, 0.5])
