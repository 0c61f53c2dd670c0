"""libra_ray: domain-specific safety alignment of LLMs (the LibraChem method) on Ray.

Stages (one sub-package each): seeds -> synth -> train -> bench, with serve hosting the
aligned model and the judge. Shared pieces: `config` (typed YAML configs), `runtime` (the one
place that starts or joins Ray), `llm` (the OpenAI-compatible client), `engines` (generation
engines), `policy` (refusal rules, judge prompts, the synth safety gate), `endpoints` (starts the
embedded local endpoints), `tiny` (the tiny-model kit used by tests and the embedded default).
The layers and which may import which: README, "Package layout / import graph".
"""

__version__ = "0.1.0"
