"""sam-tuner: Optuna search over fine-tuning SAM for Cityscapes, and INT8 export with INC."""

__version__ = "0.1.0"
