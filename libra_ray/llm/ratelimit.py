"""Requests- and tokens-per-minute budgets, local or shared by every Ray worker of a cluster.

`TokenBucket` is the budget itself: two continuously refilled buckets (requests, tokens) with a
one-second burst. A reservation may drive a bucket into debt and returns how long the caller must wait
before sending, so a reservation never blocks the bucket's owner (cheap as a Ray actor method).

`ClusterLimiter` is what a `ChatClient` holds in a Ray worker: it reserves capacity from the one named
`TokenBucket` actor in small chunks (a few requests at a time), so workers call the actor rarely and
the actor is never the bottleneck, and reports actual token usage back (`settle`) with the next
reservation.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.llm.config import EndpointConfig

_INF = float("inf")


class TokenBucket:
    """Budget of `requests_per_minute` and `tokens_per_minute` (None = unlimited), burst of `burst_s`."""

    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
                 burst_s: float = 1.0):
        self.configure(requests_per_minute, tokens_per_minute, burst_s)

    def configure(self, requests_per_minute: int | None, tokens_per_minute: int | None, burst_s: float = 1.0) -> None:
        self.rates = (requests_per_minute / 60.0 if requests_per_minute else _INF,
                      tokens_per_minute / 60.0 if tokens_per_minute else _INF)
        self.capacity = tuple(max(1.0, r * burst_s) if r != _INF else _INF for r in self.rates)
        self.levels = list(self.capacity)
        self.stamp = time.monotonic()
        self.granted = [0, 0]
        # When each grant may be used (bucket clock) and how many requests: lets tests and benchmarks
        # check the budget exactly, whatever the callers' scheduling noise. Bounded memory.
        self.schedule: collections.deque[tuple[float, int]] = collections.deque(maxlen=10_000)

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self.stamp = now - self.stamp, now
        for i, rate in enumerate(self.rates):
            if rate != _INF:
                self.levels[i] = min(self.capacity[i], self.levels[i] + elapsed * rate)

    def reserve(self, requests: int, tokens: int, settle_tokens: int = 0) -> float:
        """Take `requests` and `tokens` now (debt allowed); return the seconds to wait before using them.
        `settle_tokens` corrects earlier token estimates (actual - estimated usage)."""
        self._refill()
        delay = 0.0
        for i, amount in enumerate((requests, tokens + settle_tokens)):
            if self.rates[i] == _INF:
                continue
            self.levels[i] -= amount
            if self.levels[i] < 0:
                delay = max(delay, -self.levels[i] / self.rates[i])
        self.granted[0] += requests
        self.granted[1] += tokens + settle_tokens
        if requests:
            self.schedule.append((self.stamp + delay, requests))
        return delay

    def settle(self, tokens: int) -> None:
        self.reserve(0, 0, tokens)

    def chunk_size(self) -> int:
        """Requests a worker may reserve at once: about 100 ms of budget, 1 to 16."""
        rate = self.rates[0]
        return 16 if rate == _INF else int(min(16, max(1, rate * 0.1)))

    def stats(self) -> dict:
        return {"granted_requests": self.granted[0], "granted_tokens": self.granted[1],
                "schedule": list(self.schedule)}


class ClusterLimiter:
    """A worker's view of the shared `TokenBucket` actor, reserving in chunks (see module doc)."""

    def __init__(self, actor):
        import ray

        self._actor = actor
        self._lock = threading.Lock()
        self._chunk = ray.get(actor.chunk_size.remote())
        self._left_requests = 0
        self._left_tokens = 0
        self._ready_at = 0.0
        self._pending_settle = 0

    @classmethod
    def by_name(cls, name: str) -> "ClusterLimiter":
        import ray

        return cls(ray.get_actor(name))

    def reserve(self, requests: int, tokens: int) -> float:
        import ray

        with self._lock:
            if self._left_requests < requests or self._left_tokens < tokens:
                chunk_r = max(requests, self._chunk)
                chunk_t = max(tokens, tokens * chunk_r)
                settle, self._pending_settle = self._pending_settle, 0
                delay = ray.get(self._actor.reserve.remote(chunk_r, chunk_t, settle))
                self._ready_at = time.monotonic() + delay
                self._left_requests, self._left_tokens = chunk_r, chunk_t
            self._left_requests -= requests
            self._left_tokens -= tokens
            return max(0.0, self._ready_at - time.monotonic())

    def settle(self, tokens: int) -> None:
        with self._lock:
            self._pending_settle += tokens


def limiter_name(endpoint: "EndpointConfig", base_url: str | None = None) -> str:
    """One budget per (endpoint URL, model): every worker talking to the same endpoint shares it."""
    ident = f"{base_url or endpoint.base_url}|{endpoint.model}"
    return "libra_ray_budget_" + hashlib.sha256(ident.encode()).hexdigest()[:12]


# Driver-side handles of the budget actors (see create_cluster_limiter).
_BUDGET_ACTORS: dict[str, object] = {}


def create_cluster_limiter(endpoint: "EndpointConfig", base_url: str | None = None) -> str | None:
    """Create (or reconfigure) the named budget actor for an endpoint on the current Ray cluster and
    return its name for workers (`ClusterLimiter.by_name`); None when the endpoint has no budget."""
    if not endpoint.requests_per_minute and not endpoint.tokens_per_minute:
        return None
    import ray

    name = limiter_name(endpoint, base_url)
    actor = ray.remote(num_cpus=0)(TokenBucket).options(name=name, get_if_exists=True).remote(
        endpoint.requests_per_minute, endpoint.tokens_per_minute)
    ray.get(actor.configure.remote(endpoint.requests_per_minute, endpoint.tokens_per_minute))
    _BUDGET_ACTORS[name] = actor  # a named actor dies with its last handle: keep one for the driver's life
    return name
