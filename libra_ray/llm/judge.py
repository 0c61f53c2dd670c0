"""The judging loop: ask a versioned judge prompt about many texts through the project's ChatClient.

Shared by the benchmark (its judges), calibration and the synth gate judge. The prompts themselves
(templates, ids, reply parsers) are `libra_ray.policy.judge_prompts`; this module only needs a prompt's
`render(text, reference)` and `parse(reply)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libra_ray.policy.judge_prompts import JudgePrompt


@dataclass
class Verdict:
    """One judged text: parsed label (None = unjudged), the raw reply of the last attempt, attempts."""

    label: str | None
    raw: str | None
    attempts: int
    error: str | None = None


# Above this many texts (and with Ray running) the judge fans out over a Ray Data actor pool.
JUDGE_RAY_DATA_MIN_ROWS = 2000


def _chat_many(client: Any, batch: list[list[dict]], params: dict, ray_data_min_rows: int | None,
               ray_data_actors: int) -> list:
    """`client.chat_many`, on Ray Data when the batch is large, Ray is up and the client is a ChatClient
    (its endpoint, cache and cluster-wide budget are what every actor uses)."""
    if hasattr(client, "open"):  # bench's lazily opened judge: the ChatClient itself from here on
        client = client.open()
    if ray_data_min_rows is not None and len(batch) >= ray_data_min_rows:
        from libra_ray.llm.client import ChatClient

        if isinstance(client, ChatClient):
            import ray

            if ray.is_initialized():
                from libra_ray.llm.stage import chat_many_on_ray_data

                return chat_many_on_ray_data(client, batch, params, actors=ray_data_actors)
    return client.chat_many(batch, **params)


def judge_texts(
    client: Any,
    prompt: JudgePrompt,
    texts: Sequence[str],
    references: Sequence[str | None] | None = None,
    max_attempts: int = 3,
    params: dict | None = None,
    retry_params: Callable[[int], dict] | None = None,
    ray_data_min_rows: int | None = JUDGE_RAY_DATA_MIN_ROWS,
    ray_data_actors: int = 2,
) -> list[Verdict]:
    """Judge every text with `client.chat_many` (the project's ChatClient contract).

    Temperature 0. Unparseable replies and failed requests are retried up to `max_attempts` times in
    total (attempt k>0 adds `retry_params(k)` so a content-addressed cache does not replay the same
    bad reply); what is still unparseable stays label None with its raw reply kept.

    Scale: the ChatClient keeps `endpoint.max_concurrency` requests in flight on one shared connection
    pool; at `ray_data_min_rows` texts or more (None = never) and with Ray running, the requests fan
    out over `ray_data_actors` Ray Data actors sharing the endpoint's cluster-wide budget (the synth
    stage's machinery, `libra_ray.llm.stage`). Throughput lands in `client.stats` (`judged_rows`,
    `judge_s`, hence `judged_rows_per_s` in `as_dict()`) when the client has ChatClient stats.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    refs = list(references) if references is not None else [None] * len(texts)
    messages = [prompt.render(t, r) for t, r in zip(texts, refs)]
    base = {"temperature": 0.0, **(params or {})}
    verdicts = [Verdict(label=None, raw=None, attempts=0) for _ in texts]
    pending = list(range(len(texts)))
    started = time.monotonic()
    for attempt in range(max_attempts):
        if not pending:
            break
        call = dict(base, **(retry_params(attempt) if retry_params and attempt else {}))
        results = _chat_many(client, [messages[i] for i in pending], call, ray_data_min_rows, ray_data_actors)
        still = []
        for i, res in zip(pending, results):
            v = verdicts[i]
            v.attempts += 1
            v.error = res.error
            if res.error is None:
                v.raw = res.text
                v.label = prompt.parse(res.text)
            if v.label is None:
                still.append(i)
        pending = still
    stats = getattr(getattr(client, "client", client), "stats", None)  # through bench's lazy judge too
    if texts and hasattr(stats, "judged_rows"):
        stats.add(judged_rows=len(texts), judge_s=time.monotonic() - started)
    return verdicts
