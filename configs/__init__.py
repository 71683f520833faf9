"""Typed run configs (pydantic, ``extra="forbid"``) and the shipped YAML files.

``load_config(path, overrides)`` resolves ``extends:`` and ``--set`` overrides and validates;
``python -m configs validate FILE`` prints the resolved config. Imports only pydantic and yaml.
"""

from configs.loader import ConfigError, dump_config, load_config, private_run_dir
from configs.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "dump_config", "load_config", "private_run_dir"]
