"""Chat completions at scale on Ray Data: the actor-pool wiring shared by the synth teacher stage and
the judge, and a generic `ChatStage` (a `messages` column in, `text`/`error`/tokens out).

Actors are async callable classes: Ray Data runs several batches per actor at once (the actor's
`max_concurrency`), all sharing one `ChatClient` and its in-flight limit, so the next batch's requests
queue while the last ones of the previous batch are out (no idle gaps, per-actor concurrency not
capped by one batch's size), as `ray.data.llm`'s engine stages do. Every actor's client takes its budget
from the one cluster-wide limiter (`libra_ray.llm.ratelimit`).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libra_ray.llm.client import ChatClient, ChatResult

# Client counters carried back from the actors (on the first row of each batch: sums stay exact).
COUNTERS = ("requests", "retries", "rate_limited", "server_errors", "timeouts", "malformed", "cache_hits", "errors",
            "prompt_tokens", "completion_tokens")


def actor_pool_map_kwargs(actors: int, batch_size: int, in_flight_per_actor: int, requests_per_row: int,
                          num_cpus: float) -> dict:
    """`map_batches` arguments for an async chat stage: enough concurrent batches per actor to cover
    twice its in-flight limit, and Ray Data submitting twice that many tasks to each actor."""
    import ray

    batches = max(2, min(64, math.ceil(2 * in_flight_per_actor / (requests_per_row * batch_size))))
    return dict(batch_size=batch_size, batch_format="pyarrow", num_cpus=num_cpus,
                compute=ray.data.ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=batches,
                                                   max_tasks_in_flight_per_actor=2 * batches))


def blocks_for(rows: int, batch_size: int) -> int:
    """About one batch per block: Ray Data hands an actor whole blocks, so blocks of one batch keep
    every actor's concurrent batches filled until the very end."""
    return max(1, min(math.ceil(rows / batch_size), 512))


class ChatStage:
    """Ray Data actor: one ChatClient; each row's `messages` (JSON) -> `text`, `error`, tokens."""

    def __init__(self, endpoint_json: dict, base_url: str, cache_dir: str | None, limiter_name: str | None,
                 params: dict):
        from libra_ray.llm.client import ChatClient
        from libra_ray.llm.config import EndpointConfig
        from libra_ray.llm.ratelimit import ClusterLimiter

        limiter = ClusterLimiter.by_name(limiter_name) if limiter_name else None
        self.client = ChatClient(EndpointConfig.model_validate(endpoint_json), base_url=base_url, cache_dir=cache_dir,
                                 limiter=limiter)
        self.params = params

    async def __call__(self, batch):
        import pyarrow as pa

        from libra_ray.llm.client import ClientStats

        rows = batch.to_pylist()
        tally = ClientStats()
        results = await self.client.achat_many([json.loads(r["messages"]) for r in rows], tally=tally, **self.params)
        counters = tally.as_dict()
        out = [{"i": r["i"], "text": res.text, "error": res.error, "cached": res.cached,
                "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                **{f"client_{k}": counters[k] if j == 0 else 0 for k in COUNTERS}}
               for j, (r, res) in enumerate(zip(rows, results))]
        yield pa.Table.from_pylist(out)


def chat_many_on_ray_data(client: "ChatClient", batch: list[list[dict]], params: dict, *, actors: int = 2,
                          batch_size: int = 32, num_cpus: float = 0.25) -> list["ChatResult"]:
    """`client.chat_many(batch, **params)` fanned out over a Ray Data actor pool (each actor a copy
    of the client: same endpoint, cache and cluster-wide budget). Results in input order; the actors'
    counters are added to `client.stats`."""
    import ray

    from libra_ray.llm.client import ChatResult
    from libra_ray.llm.ratelimit import create_cluster_limiter

    limiter_name = create_cluster_limiter(client.endpoint, client.base_url)
    rows = [{"i": i, "messages": json.dumps(m, ensure_ascii=False)} for i, m in enumerate(batch)]
    ds = ray.data.from_items(rows, override_num_blocks=blocks_for(len(rows), batch_size)).map_batches(
        ChatStage, **actor_pool_map_kwargs(actors, batch_size, client.endpoint.max_concurrency, 1, num_cpus),
        fn_constructor_kwargs=dict(endpoint_json=client.endpoint.model_dump(mode="json"), base_url=client.base_url,
                                   cache_dir=client.cache.root if client.cache is not None else None,
                                   limiter_name=limiter_name, params=params))
    results: list[Any] = [None] * len(batch)
    totals = dict.fromkeys(COUNTERS, 0)
    for part in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for r in part.to_pylist():
            results[r["i"]] = ChatResult(text=r["text"], reasoning=None, prompt_tokens=r["prompt_tokens"],
                                         completion_tokens=r["completion_tokens"], cached=r["cached"],
                                         error=r["error"], raw=None)
            for k in COUNTERS:
                totals[k] += r[f"client_{k}"]
    totals["calls"] = len(batch)
    client.stats.add(**totals)
    return results
