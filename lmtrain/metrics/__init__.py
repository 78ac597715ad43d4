"""Where numbers go: the console, RUN/metrics.jsonl, RUN/results.json, TensorBoard, and the
optional Weights & Biases / MLflow loggers. This package is the only one that writes or reads
the two run files.

    files.py     RUN/metrics.jsonl and RUN/results.json: their records, writing and reading
    config.py    the optional loggers run.loggers may name (LOGGERS) and that key's check
    backends.py  TensorBoard, and each optional logger's class by name (SINKS)
    console.py   console lines that outlive a closed pipe
    logger.py    RunLogger, the one object the training loop logs through
"""

from lmtrain.metrics.backends import SINKS, TB_DIR, TrackerHome, check_loggers
from lmtrain.metrics.config import LOGGERS
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
    "SINKS",
    "RunLogger",
    "TrackerHome",
    "TrainPoint",
    "check_loggers",
    "config_sha256",
    "console",
    "read_metrics",
    "read_results",
    "silence",
    "write_results",
]
