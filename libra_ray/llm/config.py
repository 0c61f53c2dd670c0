"""Config of an OpenAI-compatible endpoint (teacher, judge or hosted baseline)."""

from __future__ import annotations

from pydantic import Field

from libra_ray._config_base import StrictModel


class EndpointConfig(StrictModel):
    """Any OpenAI-compatible chat endpoint.

    `base_url` None means the embedded default: a local OpenAI-compatible server on 127.0.0.1
    hosting the tiny model (its text is nonsense; the wiring is real), or, with `model:
    offline-paraphraser`, the offline stand-in teacher (libra_ray.synth.paraphraser). The API key is read from the
    environment variable named by `api_key_env` at call time and never stored in configs or outputs.
    """

    base_url: str | None = Field(default=None, description="the endpoint's OpenAI-compatible base URL, e.g. "
                                 "https://api.openai.com/v1 (null = the embedded local server, see above)")
    model: str = Field(default="tiny", description="model name sent to the endpoint (with base_url null: tiny, "
                       "tiny-pretrained, a local folder, or offline-paraphraser for the offline stand-in teacher)")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="name of the environment variable holding "
                                    "the API key (read at call time, never stored; null = no key)")
    timeout_s: float = Field(default=60.0, gt=0, description="seconds per request before it counts as a timeout")
    max_retries: int = Field(default=6, ge=0, description="retries of 429/5xx/timeouts per request")
    max_malformed_retries: int = Field(default=2, ge=0, description="re-asks when a 200 answer is unusable")
    backoff_base_s: float = Field(default=0.5, ge=0, description="base of the exponential, jittered retry delay")
    backoff_max_s: float = Field(default=30.0, ge=0, description="cap of the exponential retry delay")
    requests_per_minute: int | None = Field(default=None, gt=0, description="cluster-wide request budget shared by "
                                            "every Ray worker (null = unlimited)")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="cluster-wide token budget shared by "
                                          "every Ray worker (null = unlimited)")
    learn_rate_limit: bool = Field(
        default=True, description="adapt the cluster-wide budget to the provider's x-ratelimit-* headers and 429s: "
        "a budget set too high converges to the provider's limit, a missing one is discovered")
    max_concurrency: int = Field(default=16, ge=1, description="requests in flight per worker")
    temperature: float = Field(default=0.7, ge=0, description="sampling temperature of every request")
    max_tokens: int = Field(default=256, ge=1, description="max completion tokens per request")
    price_prompt_per_m: float = Field(default=0.0, ge=0, description="USD per 1M prompt tokens, for the cost "
                                      "estimate (both prices 0 = libra_ray/synth/prices.py's table entry for the model)")
    price_completion_per_m: float = Field(default=0.0, ge=0, description="USD per 1M completion tokens, for the "
                                          "cost estimate (see price_prompt_per_m)")
