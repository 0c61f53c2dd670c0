"""What defines the policy, in one place that synth, bench and serve all import (so generation,
evaluation and serving agree on what a refusal and what an unsafe text is):

- `rules`: the rule-based refusal detectors (`paper`, `start`, `both`, `opening`) and splitting
  reasoning traces off final answers;
- `judge_prompts`: the versioned LLM-judge prompts and their reply parsers (the benchmark's judges,
  the serving guard's, and the synth gate judge's `actionable_v1`);
- `safety`: the synth safety gate (a text attached to an illegitimate compound must not be actionable).

Pure Python (re, dataclasses): no Ray, no client; the loop that asks a judge is `libra_ray.llm.judge`.
"""
