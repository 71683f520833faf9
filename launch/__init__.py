"""Launchers: shell scripts for a multi-GPU node, a CPU box and multi-node, plus their Python helpers.

Importing ``launch`` applies :func:`configs.device.process_env` to this process (and so to every component it starts):
the launcher, ``launch.compare`` and its TRL peer probe CUDA and start vLLM engines too.
"""

from configs.device import process_env

process_env()
