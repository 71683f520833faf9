"""Launchers: shell scripts for a multi-GPU node, a CPU box and multi-node, plus their Python helpers."""
