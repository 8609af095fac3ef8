"""INT8 for CPU deployment with Intel Neural Compressor, gated on accuracy.

`quantize_checkpoint` takes a sam-tuner checkpoint, quantizes it with every asked method
(`METHODS`: static W8A8 and dynamic through PT2E, weight-only RTN on the eager module; under
`auto`, those this CPU's ISA rules out only when needed: `plan_methods`), measures each
candidate against FP32 in the same process (mIoU, boundary F1, latency, size), and writes the
chosen one only if it stays within the tolerance. `load_quantized` reads it back. Nothing
here knows Optuna: `tuner.deploy.trials` quantizes a study's trials.
"""

from tuner.deploy.quantize._inc import METHODS, Method, ipex_status, plan_methods
from tuner.deploy.quantize._measure import Measurement
from tuner.deploy.quantize._pipeline import QuantizeOptions, quantize_checkpoint
from tuner.deploy.quantize._report import QuantizeReport, comparison_rows
from tuner.deploy.quantize._store import (
    COMPARISON_FILE,
    META_FILE,
    QuantizationError,
    archive,
    load_quantized,
    read_meta,
    write_comparison,
    write_report,
)

__all__ = [
    "COMPARISON_FILE",
    "META_FILE",
    "METHODS",
    "Measurement",
    "Method",
    "QuantizationError",
    "QuantizeOptions",
    "QuantizeReport",
    "archive",
    "comparison_rows",
    "ipex_status",
    "load_quantized",
    "plan_methods",
    "quantize_checkpoint",
    "read_meta",
    "write_comparison",
    "write_report",
]
