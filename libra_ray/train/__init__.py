"""Stage 2, train: (SFT on the chosen responses ->) DPO with TRL on Ray Train, DeepSpeed ZeRO optional.

`run(cfg)` is the stage entry (called inside `libra_ray.runtime.ray_session`); see `launcher` (driver)
and `worker` (what each Ray Train worker runs).
"""

from __future__ import annotations


def run(cfg):  # noqa: ANN001 - PipelineConfig; imported lazily so `import libra_ray.train` stays light
    from libra_ray.train.launcher import run as _run

    return _run(cfg)


def preflight(cfg):  # noqa: ANN001 - PipelineConfig; input checks that need no Ray (the CLI calls them first)
    from libra_ray.train.launcher import preflight as _preflight

    _preflight(cfg)


__all__ = ["preflight", "run"]
