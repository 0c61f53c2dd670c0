"""Requests- and tokens-per-minute budgets, local or shared by every Ray worker of a cluster, that learn
the provider's real limit.

`TokenBucket` is the budget itself: two continuously refilled buckets (requests, tokens) with a short
burst. `reserve` may drive a bucket into debt and returns how long the caller must wait before sending,
so a reservation never blocks the bucket's owner (cheap as a Ray actor method). `grant` is the same
with a bounded horizon: it refuses (and says when to ask again) instead of handing out budget more
than `horizon_s` ahead, so a rate that changes (learned below) takes effect within that horizon instead
of after every queued reservation has been served at the old rate.

`RateAdapter` is the learning part (pure, clock injected, unit-tested): OpenAI-style
`x-ratelimit-limit-requests/-tokens` headers set the ceiling (never above a configured budget), 429s
cut the rate multiplicatively (at most once per cool-down), and the rate recovers additively toward
the ceiling. A budget configured too high converges to the provider's; a missing one is discovered
(the first 429 starts from the rate actually granted).

`ClusterLimiter` is what a `ChatClient` holds in a Ray worker: it takes budget from the one named
`TokenBucket` actor in small chunks (about 100 ms of budget), one actor call in flight per process, and
piggybacks what it saw (429s, the provider's limit headers, actual token usage) on the next call. While
the budget is unlimited it calls the actor only to report a 429 or a new limit, and once a second to
hear whether another worker discovered one.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.llm.config import EndpointConfig

_INF = float("inf")
# The cluster budget's burst, in seconds of budget: half the providers' usual one-second burst, so
# requests that reach the provider a little late or early (transit jitter) never exceed its bucket.
CLUSTER_BURST_S = 0.5
# How far ahead a `grant` may hand out budget (seconds): bounds how long an old rate outlives a change.
GRANT_HORIZON_S = 0.25


# ---- the provider's rate-limit headers ----------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "20ms", "1h2m3.5s", or plain seconds) in seconds."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value.strip())
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[unit] for n, unit in parts)


def parse_rate_limit_headers(headers: Mapping[str, str]) -> dict | None:
    """{"limit_requests", "remaining_requests", "reset_requests", ... tokens} from OpenAI-style
    `x-ratelimit-*` headers (limits are per minute); None when the response carries none."""
    limit = headers.get("x-ratelimit-limit-requests")
    limit_t = headers.get("x-ratelimit-limit-tokens")
    if limit is None and limit_t is None:
        return None
    out: dict = {}
    for kind in ("requests", "tokens"):
        for key in ("limit", "remaining"):
            raw = headers.get(f"x-ratelimit-{key}-{kind}")
            try:
                out[f"{key}_{kind}"] = int(float(raw)) if raw is not None else None
            except ValueError:
                out[f"{key}_{kind}"] = None
        out[f"reset_{kind}"] = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
    return out


# ---- learning the rate ----------------------------------------------------------------------------
class RateAdapter:
    """Additive-increase / multiplicative-decrease of a (requests, tokens) per-second rate.

    `rates` are the rates to enforce now (inf = unlimited). The ceiling of each is the configured
    budget, lowered to the provider's `x-ratelimit-limit-*` when that is smaller. A 429 multiplies the
    limited rates by `decrease` (once per `cooldown_s`: the answers to one burst arrive together); an
    unlimited requests rate becomes `decrease` x the rate granted recently. Between 429s each limited
    rate grows by `increase` x its ceiling (or its rate before the last cut, when there is no ceiling)
    per second, up to the ceiling. Deterministic: every method takes `now`.
    """

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None, *, decrease: float = 0.7,
                 increase: float = 0.1, cooldown_s: float = 1.0, now: float = 0.0):
        self.configured = (requests_per_minute / 60.0 if requests_per_minute else _INF,
                           tokens_per_minute / 60.0 if tokens_per_minute else _INF)
        self.ceiling = list(self.configured)  # what we never exceed (configured, or the provider's limit)
        self.rates = list(self.configured)
        self.decrease, self.increase, self.cooldown_s = decrease, increase, cooldown_s
        self._before_cut = list(self.configured)
        self._last_cut = -_INF
        self._stamp = now
        self.rate_limited = 0  # 429s seen
        self.learned = [None, None]  # the provider's limits per minute, as its headers said

    def on_limits(self, limit_requests: int | None, limit_tokens: int | None) -> bool:
        """The provider's per-minute limits (headers); True when a ceiling changed."""
        changed = False
        for i, limit in enumerate((limit_requests, limit_tokens)):
            if not limit or limit <= 0:
                continue
            self.learned[i] = limit
            ceiling = min(self.configured[i], limit / 60.0)
            if ceiling != self.ceiling[i]:
                self.ceiling[i] = ceiling
                self.rates[i] = min(self.rates[i], ceiling)
                changed = True
        return changed

    def on_rate_limited(self, now: float, granted_rate: float, count: int = 1) -> bool:
        """429s seen at `now`; `granted_rate` = requests/s granted recently (to discover a missing
        budget). True when the rates were cut."""
        self.rate_limited += count
        if now - self._last_cut < self.cooldown_s:
            return False
        self._advance(now)
        self._last_cut = now
        limited = [i for i in (0, 1) if self.rates[i] != _INF]
        if not limited:  # no budget anywhere yet: discover one from what actually went out
            self.rates[0] = max(1 / 60.0, granted_rate)
            limited = [0]
        for i in limited:
            self._before_cut[i] = self.rates[i]
            self.rates[i] = max(1 / 60.0, self.rates[i] * self.decrease)
        return True

    def advance(self, now: float) -> None:
        """Additive recovery since the last call."""
        self._advance(now)

    def _advance(self, now: float) -> None:
        elapsed, self._stamp = max(0.0, now - self._stamp), now
        for i in (0, 1):
            rate, ceiling = self.rates[i], self.ceiling[i]
            if rate == _INF or rate >= ceiling:
                continue
            step = (ceiling if ceiling != _INF else self._before_cut[i]) * self.increase * elapsed
            self.rates[i] = min(ceiling, rate + step)

    def state(self) -> dict:
        per_min = [r * 60.0 if r != _INF else None for r in self.rates]
        return {"requests_per_minute": per_min[0], "tokens_per_minute": per_min[1], "rate_limited": self.rate_limited,
                "provider_limit_requests": self.learned[0], "provider_limit_tokens": self.learned[1]}


# ---- the budget -----------------------------------------------------------------------------------
class TokenBucket:
    """Budget of `requests_per_minute` and `tokens_per_minute` (None = unlimited), burst of `burst_s`;
    with `adaptive` it learns the provider's limit from `feedback` (see `RateAdapter`)."""

    def __init__(self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
                 burst_s: float = 1.0, adaptive: bool = False, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.configure(requests_per_minute, tokens_per_minute, burst_s, adaptive)

    def configure(self, requests_per_minute: int | None, tokens_per_minute: int | None, burst_s: float = 1.0,
                  adaptive: bool = False) -> None:
        self.burst_s = burst_s
        self.adapter = RateAdapter(requests_per_minute, tokens_per_minute, now=self._clock()) if adaptive else None
        self.levels = [0.0, 0.0]
        self._set_rates((requests_per_minute / 60.0 if requests_per_minute else _INF,
                         tokens_per_minute / 60.0 if tokens_per_minute else _INF))
        self.levels = list(self.capacity)
        self.stamp = self._clock()
        self.granted = [0, 0]
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, requests) of the last 2 s
        # When each grant may be used (bucket clock) and how many requests: lets tests and benchmarks
        # check the budget exactly, whatever the callers' scheduling noise. Bounded memory.
        self.schedule: collections.deque[tuple[float, int]] = collections.deque(maxlen=10_000)

    def _set_rates(self, rates: tuple[float, float]) -> None:
        self.rates = tuple(rates)
        self.capacity = tuple(max(1.0, r * self.burst_s) if r != _INF else _INF for r in self.rates)
        self.levels = [min(level, cap) for level, cap in zip(self.levels, self.capacity)]

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self.stamp = now - self.stamp, now
        if self.adapter is not None:
            self.adapter.advance(now)
            if tuple(self.adapter.rates) != self.rates:
                self._set_rates(tuple(self.adapter.rates))
        for i, rate in enumerate(self.rates):
            if rate != _INF:
                self.levels[i] = min(self.capacity[i], self.levels[i] + elapsed * rate)

    def _take(self, requests: int, tokens: int) -> float:
        delay = 0.0
        for i, amount in enumerate((requests, tokens)):
            if self.rates[i] == _INF:
                continue
            self.levels[i] -= amount
            if self.levels[i] < 0:
                delay = max(delay, -self.levels[i] / self.rates[i])
        self.granted[0] += requests
        self.granted[1] += tokens
        if requests:
            self.schedule.append((self.stamp + delay, requests))
            self._recent.append((self.stamp + delay, requests))
            while self._recent[0][0] < self.stamp - 2.0:  # only the last 2 s matter (_granted_rate)
                self._recent.popleft()
        return delay

    def reserve(self, requests: int, tokens: int, settle_tokens: int = 0) -> float:
        """Take `requests` and `tokens` now (debt allowed); return the seconds to wait before using them.
        `settle_tokens` corrects earlier token estimates (actual - estimated usage)."""
        self._refill()
        return self._take(requests, tokens + settle_tokens)

    def grant(self, requests: int, tokens: int, settle_tokens: int = 0, feedback: dict | None = None
              ) -> tuple[bool, float, bool, int]:
        """Like `reserve`, but refuses budget more than `GRANT_HORIZON_S` ahead: (granted, delay,
        unlimited, chunk size for the next call). Not granted: nothing was taken, ask again after
        `delay` seconds. `feedback` is what a worker saw since its last call (see `feedback`)."""
        if feedback:
            self.feedback(**feedback)
        self._refill()
        if settle_tokens:
            self._take(0, settle_tokens)
        unlimited = all(r == _INF for r in self.rates)
        wait = 0.0
        for i, amount in enumerate((requests, tokens)):
            if self.rates[i] != _INF:
                wait = max(wait, (amount - self.levels[i]) / self.rates[i] - GRANT_HORIZON_S)
        if wait > 0:
            return False, wait, unlimited, self.chunk_size()
        return True, self._take(requests, tokens), unlimited, self.chunk_size()

    def feedback(self, rate_limited: int = 0, limits: dict | None = None) -> None:
        """What callers saw from the provider: `rate_limited` 429s, and its `x-ratelimit-*` headers
        (`parse_rate_limit_headers`). Ignored unless the bucket is adaptive."""
        if self.adapter is None:
            return
        now = self._clock()
        self._refill()
        changed = False
        if limits:
            changed = self.adapter.on_limits(limits.get("limit_requests"), limits.get("limit_tokens"))
        if rate_limited:
            changed |= self.adapter.on_rate_limited(now, self._granted_rate(now), rate_limited)
        if changed:
            self._set_rates(tuple(self.adapter.rates))
            if limits and limits.get("remaining_requests") is not None and self.rates[0] != _INF:
                # The provider's bucket is the one that counts: never start above what it has left.
                self.levels[0] = min(self.levels[0], float(limits["remaining_requests"]))

    def _granted_rate(self, now: float) -> float:
        while self._recent and self._recent[0][0] < now - 2.0:
            self._recent.popleft()
        return sum(k for t, k in self._recent if t <= now) / 2.0

    def chunk_size(self) -> int:
        """Requests a worker may reserve at once: about 100 ms of budget, 1 to 16."""
        rate = self.rates[0]
        return 16 if rate == _INF else int(min(16, max(1, rate * 0.1)))

    def stats(self) -> dict:
        out = {"granted_requests": self.granted[0], "granted_tokens": self.granted[1], "schedule": list(self.schedule)}
        if self.adapter is not None:
            out["adaptive"] = self.adapter.state()
        return out

    # A local (one-process) budget can be a ChatClient's limiter directly.
    async def acquire(self, requests: int, tokens: int) -> None:
        delay = self.reserve(requests, tokens)
        if delay > 0:
            await asyncio.sleep(delay)

    def settle(self, tokens: int) -> None:
        self.reserve(0, 0, tokens)

    def observe(self, rate_limited: bool, limits: dict | None) -> None:
        if rate_limited or limits:
            self.feedback(int(rate_limited), limits)


class ClusterLimiter:
    """A worker's view of the shared `TokenBucket` actor, taking budget in chunks (see module doc)."""

    REFRESH_S = 1.0  # how often an unlimited worker asks whether a budget was discovered

    def __init__(self, actor):
        import ray

        self._actor = actor
        self._lock = threading.Lock()
        self._chunk = ray.get(actor.chunk_size.remote())
        self._left_requests = 0
        self._left_tokens = 0
        self._ready_at = 0.0
        self._pending_settle = 0
        # Feedback not yet reported to the actor, and the limits already reported.
        self._pending_429 = 0
        self._pending_limits: dict | None = None
        self._reported_limits: tuple = (None, None)
        self._unlimited = False
        self._next_refresh = 0.0
        self._alock: asyncio.Lock | None = None

    @classmethod
    def by_name(cls, name: str) -> "ClusterLimiter":
        import ray

        return cls(ray.get_actor(name))

    def reserve(self, requests: int, tokens: int) -> float:
        """Blocking variant (no horizon, no feedback): seconds to wait before sending."""
        import ray

        with self._lock:
            if self._left_requests < requests:
                chunk_r = max(requests, self._chunk)
                chunk_t = tokens * chunk_r
                settle, self._pending_settle = self._pending_settle, 0
                delay = ray.get(self._actor.reserve.remote(chunk_r, chunk_t, settle))
                self._ready_at = time.monotonic() + delay
                self._left_requests += chunk_r
                self._left_tokens += chunk_t
            self._take_local(requests, tokens)
            return max(0.0, self._ready_at - time.monotonic())

    def _take_local(self, requests: int, tokens: int) -> None:
        """Use `requests` of the current chunk; tokens beyond the chunk's share are charged to the
        next actor call (a chunk is never abandoned for a larger token estimate: no grant is wasted)."""
        self._left_requests -= requests
        self._left_tokens -= tokens
        if self._left_tokens < 0:
            self._pending_settle += -self._left_tokens
            self._left_tokens = 0

    async def acquire(self, requests: int, tokens: int) -> None:
        """Wait until this worker may send `requests` using `tokens` (the client's event loop)."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        while True:
            now = time.monotonic()
            if self._unlimited and not self._has_feedback() and now < self._next_refresh:
                return
            if not self._unlimited and self._left_requests >= requests:
                self._take_local(requests, tokens)
                if self._ready_at > now:
                    await asyncio.sleep(self._ready_at - now)
                return
            async with self._alock:  # one actor call in flight per worker; the others wait for its chunk
                if self._left_requests >= requests and not self._unlimited:
                    continue
                if self._unlimited and not self._has_feedback() and time.monotonic() < self._next_refresh:
                    continue
                chunk_r = max(requests, self._chunk)
                chunk_t = tokens * chunk_r
                feedback = self._take_feedback()
                settle, self._pending_settle = self._pending_settle, 0
                granted, delay, unlimited, self._chunk = await self._actor.grant.remote(chunk_r, chunk_t, settle, feedback)
                self._unlimited = unlimited
                self._next_refresh = time.monotonic() + self.REFRESH_S
                if unlimited:
                    self._left_requests = self._left_tokens = 0
                elif granted:
                    self._ready_at = time.monotonic() + delay
                    self._left_requests += chunk_r
                    self._left_tokens += chunk_t
                else:
                    await asyncio.sleep(delay)

    def settle(self, tokens: int) -> None:
        with self._lock:
            self._pending_settle += tokens

    def observe(self, rate_limited: bool, limits: dict | None) -> None:
        """Remember a response's 429 / limit headers for the next actor call (no call per response)."""
        if rate_limited:
            self._pending_429 += 1
        if limits:
            key = (limits.get("limit_requests"), limits.get("limit_tokens"))
            if key != self._reported_limits:
                self._pending_limits = limits

    def _has_feedback(self) -> bool:
        return bool(self._pending_429 or self._pending_limits)

    def _take_feedback(self) -> dict | None:
        if not self._has_feedback():
            return None
        out = {"rate_limited": self._pending_429, "limits": self._pending_limits}
        if self._pending_limits:
            self._reported_limits = (self._pending_limits.get("limit_requests"), self._pending_limits.get("limit_tokens"))
        self._pending_429, self._pending_limits = 0, None
        return out


def limiter_name(endpoint: "EndpointConfig", base_url: str | None = None) -> str:
    """One budget per (endpoint URL, model): every worker talking to the same endpoint shares it."""
    ident = f"{base_url or endpoint.base_url}|{endpoint.model}"
    return "libra_ray_budget_" + hashlib.sha256(ident.encode()).hexdigest()[:12]


# Driver-side handles of the budget actors (see create_cluster_limiter).
_BUDGET_ACTORS: dict[tuple[str, str], object] = {}


def create_cluster_limiter(endpoint: "EndpointConfig", base_url: str | None = None) -> str | None:
    """Create (or reconfigure) the named budget actor for an endpoint on the current Ray cluster and
    return its name for workers (`ClusterLimiter.by_name`); None when the endpoint has no budget and
    does not learn one (`learn_rate_limit` false)."""
    adaptive = endpoint.learn_rate_limit
    if not endpoint.requests_per_minute and not endpoint.tokens_per_minute and not adaptive:
        return None
    import ray

    name = limiter_name(endpoint, base_url)
    args = (endpoint.requests_per_minute, endpoint.tokens_per_minute, CLUSTER_BURST_S, adaptive)
    # Keep the creating handle for the driver's life: a (non-detached) named actor dies with its
    # owner's handle, so a second run must reuse it rather than replace it with a looked-up one.
    key = (name, ray.get_runtime_context().get_node_id())  # a handle from an earlier cluster is useless
    actor = _BUDGET_ACTORS.get(key)
    if actor is None:
        actor = ray.remote(num_cpus=0)(TokenBucket).options(name=name, get_if_exists=True).remote(*args)
        _BUDGET_ACTORS[key] = actor
    ray.get(actor.configure.remote(*args))
    return name
