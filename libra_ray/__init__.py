"""libra_ray: domain-specific safety alignment of LLMs (the LibraChem method) on Ray.

Stages (one sub-package each): seeds -> synth -> train -> bench, with serve hosting the
aligned model and the judge. Shared pieces: `config` (typed YAML configs), `runtime` (the one
place that starts or joins Ray), `llm` (the OpenAI-compatible client and engines), `tiny`
(the tiny-model kit used by tests and the embedded default).
"""

__version__ = "0.1.0"
