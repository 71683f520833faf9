"""The GRPO learner: DeepSpeed + PEFT LoRA training driven by rollouts from the actors.

Entry points: ``python -m learner`` (training), ``python -m learner.sft`` (Scenario B warm-up),
``python -m learner.bench`` (throughput). In code::

    from learner.trainer import Trainer
    result = Trainer(cfg, transport, publisher, resume=False).run()

``transport`` is a :class:`sync.RolloutTransport` and ``publisher`` a :class:`sync.WeightPublisher`
(``sync.ZmqRolloutTransport(cfg.sync)`` / ``sync.ZmqWeightPublisher(cfg.sync)`` in production, the
in-process :class:`learner.rollouts_local.HFLocalActor` for tests); only rank 0 needs them.

Modules: ``loss`` (advantages and the Dr. GRPO loss, torch only), ``rollouts`` (groups -> checked
batch -> tensors), ``sampler``, ``schedule``, ``engine`` (DeepSpeed + PEFT), ``trainer`` (the loop),
``checkpoint``, ``metrics`` (jsonl + wandb + progress bar), ``watchdog``, ``data`` (pairs, eval subset,
reward from config), ``sft``, ``bench``, ``rollouts_local``.
Importing ``learner`` imports nothing heavy.
"""
