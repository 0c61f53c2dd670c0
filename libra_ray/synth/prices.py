"""Teacher prices (USD per 1M tokens) for cost estimates: the dry run and the dataset card.

Providers' published list prices (standard tier, no batch/caching discounts) at the time of writing:
check them before budgeting a large run. A price set in the config wins over this table:
`--set synth.teacher.price_prompt_per_m=2.5 --set synth.teacher.price_completion_per_m=10`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.llm.config import EndpointConfig

# model name (or its prefix, e.g. a dated snapshot "gpt-4o-2024-08-06") -> (prompt, completion) USD per 1M tokens
PRICES_PER_M: dict[str, tuple[float, float]] = {
    "tiny": (0.0, 0.0),  # the embedded local teacher
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-opus": (15.00, 75.00),
}


def teacher_prices(endpoint: "EndpointConfig") -> tuple[float, float, str]:
    """(prompt, completion) USD per 1M tokens and where they came from: the config when it sets a price,
    else the table entry with the longest matching prefix of the model name, else (0, 0) 'unknown'."""
    if endpoint.price_prompt_per_m or endpoint.price_completion_per_m:
        return endpoint.price_prompt_per_m, endpoint.price_completion_per_m, "config"
    model = endpoint.model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" -> "gpt-4o"
    matches = [name for name in PRICES_PER_M if model.startswith(name)]
    if not matches:
        return 0.0, 0.0, f"unknown model {endpoint.model!r}: set synth.teacher.price_prompt_per_m / price_completion_per_m"
    name = max(matches, key=len)
    return (*PRICES_PER_M[name], f"price table ({name})")
