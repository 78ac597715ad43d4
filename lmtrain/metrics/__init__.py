"""Where numbers go: the console, RUN/metrics.jsonl, RUN/results.json, TensorBoard, and the
optional Weights & Biases / MLflow loggers. This package is the only one that writes or reads
the two run files.

    files.py     RUN/metrics.jsonl and RUN/results.json: their records, writing and reading
    backends.py  TensorBoard, and the optional loggers by name (LOGGERS: Weights & Biases, MLflow)
    console.py   console lines that outlive a closed pipe
    logger.py    RunLogger, the one object the training loop logs through
"""

from lmtrain.metrics.backends import LOGGERS, TB_DIR, check_loggers, logger_problems
from lmtrain.metrics.console import console, silence
from lmtrain.metrics.files import (
    METRICS_FILE,
    RESULTS_FILE,
    RESULTS_VERSION,
    MetricsError,
    MetricsFile,
    config_sha256,
    read_metrics,
    read_results,
    write_results,
)
from lmtrain.metrics.logger import RunLogger, TrainPoint

__all__ = [
    "LOGGERS",
    "METRICS_FILE",
    "RESULTS_FILE",
    "RESULTS_VERSION",
    "TB_DIR",
    "MetricsError",
    "MetricsFile",
    "RunLogger",
    "TrainPoint",
    "check_loggers",
    "config_sha256",
    "console",
    "logger_problems",
    "read_metrics",
    "read_results",
    "silence",
    "write_results",
]
