"""The search layer: one YAML search space, an Optuna study over it, and the trials that fit
the core's TrainConfig. `run` drives it; `study/` is the Optuna side; `attrs` names what is
recorded."""
