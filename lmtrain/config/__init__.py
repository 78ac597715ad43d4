"""The config: one typed schema for the YAML file and for every command's options.

A config is a YAML file with four sections (`data`, `model`, `train`, `run`) plus dotted overrides
given after it on the command line (`train.lr=0.5 model.cell=gru`). Loading is strict: every
unknown key, wrong type, out-of-range value and cross-field conflict is collected, and all of them
are reported together in one `ConfigError` before any work starts.

    schema.py     the root Config and its run section: format, defaults, one-line docs; the data,
                  model and train sections live in lmtrain/data/config.py,
                  lmtrain/models/config.py and lmtrain/training/config.py, each with its checks
                  (and the optimiser table and memory estimate in the train section's), and are
                  re-exported here
    commands.py   the options of eval, score, sample, diagnose and plot: dataclasses of the same kind
    convert.py    build_options: command options from a mapping, by lmtrain/records.py
    yamlfile.py   strict YAML parsing and dotted overrides
    load.py       load_config / config_from_dict: parse, override, convert, expand, check
    checks.py     the checks of the whole config: each section's, then run's and the text's
    resources.py  the memory a config needs (the train section's estimate) against the device's
    describe.py   the text of `lmtrain config`
"""

from __future__ import annotations

from lmtrain.config.commands import (
    COMMAND_OPTIONS,
    AdaptOptions,
    DeviceOptions,
    EvalOptions,
    GradientFlowOptions,
    PlotOptions,
    SampleOptions,
    ScoreOptions,
    require_valid,
)
from lmtrain.config.convert import build_options
from lmtrain.config.describe import describe
from lmtrain.config.load import config_from_dict, expand_path_if_set, load_config
from lmtrain.config.resources import (
    MemoryEstimate,
    check_resources,
    estimate_memory,
    memory_available,
    resource_problems,
)
from lmtrain.config.schema import (
    AdaptiveSoftmaxConfig,
    Config,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from lmtrain.config.yamlfile import CONFIG_MAX_BYTES, MAX_YAML_VALUES, apply_overrides
from lmtrain.records import field_docs

__all__ = [
    "COMMAND_OPTIONS",
    "CONFIG_MAX_BYTES",
    "MAX_YAML_VALUES",
    "AdaptOptions",
    "AdaptiveSoftmaxConfig",
    "Config",
    "DataConfig",
    "DeviceOptions",
    "EvalOptions",
    "GradientFlowOptions",
    "MemoryEstimate",
    "ModelConfig",
    "PlotOptions",
    "RunConfig",
    "SampleOptions",
    "ScoreOptions",
    "TrainConfig",
    "apply_overrides",
    "build_options",
    "require_valid",
    "check_resources",
    "config_from_dict",
    "describe",
    "estimate_memory",
    "expand_path_if_set",
    "field_docs",
    "load_config",
    "memory_available",
    "resource_problems",
]
