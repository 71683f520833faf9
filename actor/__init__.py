"""Rollout actors: one vLLM engine per process serving G-sample rollouts to the learner.

- ``python -m actor --config FILE [--replica K]``: the server (``actor.__main__``, ``actor.serve``);
- :class:`actor.engine.RolloutEngine`: the engine and its rollouts; :mod:`actor.loading`, its half that serves one
  policy version and loads the next (``merged``/``adapter`` serving, ``drain``/``inflight`` loads);
- ``actor.merge.LoraMergeExtension``: the vLLM worker extension that merges LoRA deltas in place;
- ``python -m actor.bench``: rollout throughput against HF generate and raw vLLM.

Importing ``actor`` imports neither vLLM nor torch; the submodules do. It sets the process environment every
process that may start vLLM needs before its first CUDA probe (:func:`configs.device.process_env`: a fork-safe
``torch.cuda.is_available()``, no usage statistics sent, no nvcc-compiled sampler).
"""

from configs.device import process_env

process_env()
