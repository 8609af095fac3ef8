"""Search spaces: one YAML file per study, validated into a typed `SearchSpace`.

A file says what varies (`params`), what is fixed (`fixed`), what is optimised (`objectives`),
how (sampler, pruner) and for how long (trials, timeout). Both `fixed` and `params` use the
field names of `TrainConfig`, so anything a run can be told, a study can vary.
"""

from tuner.search._parse import load_space, parse_space
from tuner.search._space import (
    METRICS,
    SEARCH_SPACE_DIR,
    TOP_LEVEL_KEYS,
    Confirm,
    FaultTolerance,
    Objective,
    Param,
    Record,
    SearchSpace,
    Stop,
    WarmStart,
    find_space,
    param_value,
)

__all__ = [
    "METRICS",
    "SEARCH_SPACE_DIR",
    "TOP_LEVEL_KEYS",
    "Confirm",
    "FaultTolerance",
    "Objective",
    "Param",
    "Record",
    "SearchSpace",
    "Stop",
    "WarmStart",
    "find_space",
    "load_space",
    "param_value",
    "parse_space",
]
