"""Honest training figures: steady-state step time and tokens/s, the wall-time split, and MFU.

Pure arithmetic (no torch at import) so it is unit-tested with numbers checked by hand.

- Steady state: the median over the steps after the first `WARMUP_STEPS` of this attempt (compilation,
  allocator and data-loader warm-up). A step's time runs from the end of the previous step (or of the
  previous checkpoint save) to its own end: a checkpoint save is never inside a step's time.
- Tokens: TRL's cumulative `num_tokens` (non-padding tokens of all ranks; chosen + rejected for DPO) read
  at each logging step; the tokens of a logging interval are spread evenly over its steps.
- MFU = tokens/s (all ranks) x FLOPs per token / (ranks x the device's peak dense bf16 FLOP/s), with
  FLOPs per token = k x N: N = the weights of the linear layers including lm_head (from the model config;
  the input embedding is a lookup), k = 6 for a full-weight policy (forward 2N + backward 4N), 4 with LoRA
  (the frozen weights get no weight gradient: forward 2N + input gradients 2N), + 2 for DPO's reference
  forward unless the reference log-probs are precomputed (DPO full weights: 8N).
"""

from __future__ import annotations

import statistics

WARMUP_STEPS = 3

# Peak dense (no sparsity) bf16 tensor FLOP/s per device from the vendors' datasheets, matched as a
# substring of torch.cuda.get_device_name(), longest key first ("H100 PCIe" before "H100", "L40S" before "L4").
PEAK_BF16_FLOPS = {
    "B200": 2250e12,
    "H200": 989e12,
    "GH200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM and NVL
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
}


def device_peak_flops(device_name: str | None, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `override` when set, else the table entry for `device_name`, else None."""
    if override:
        return float(override)
    if not device_name:
        return None
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_FLOPS[key]
    return None


def linear_params(config: dict) -> int | None:
    """N: weights of the linear layers of a decoder-only transformer (attention q/k/v/o, gated MLP, lm_head),
    from its HF config dict (Llama, Qwen2, Mistral key names); None when a key is missing."""
    try:
        h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        inter, heads = config["intermediate_size"], config["num_attention_heads"]
    except KeyError:
        return None
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * h * inter  # gate, up, down
    return layers * (attention + mlp) + h * vocab  # + lm_head (tied or not, it is a matmul)


def flops_per_token_factor(kind: str, *, lora: bool, reference_forward: bool) -> int:
    """k in FLOPs/token = k x N (see the module docstring)."""
    k = 4 if lora else 6
    if kind == "dpo" and reference_forward:
        k += 2
    return k


def shows_progress(step: int, max_steps: int, lines: int) -> bool:
    """Whether the progress line of this (logged) step is printed: the first step, every
    ceil(max_steps / lines)-th step (about `lines` lines in all) and the last; every step when `lines` is 0
    or the number of steps is unknown (max_steps <= 0)."""
    if lines <= 0 or max_steps <= 0 or step <= 1 or step >= max_steps:
        return True
    return step % -(-max_steps // lines) == 0


def mfu(tokens_per_s: float | None, flops_per_token: float | None, devices: int, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when a factor is unknown (on CPU without a peak override)."""
    if not tokens_per_s or not flops_per_token or not peak_flops or devices < 1:
        return None
    return tokens_per_s * flops_per_token / (devices * peak_flops)


class StepTimer:
    """Fed by the trainer callback with `time.perf_counter()` readings (no device sync, no `.item()`): per step
    its seconds, per logging step TRL's cumulative token count, per save its seconds."""

    def __init__(self, warmup_steps: int = WARMUP_STEPS):
        self.warmup_steps = warmup_steps
        self.train_begin: float | None = None
        self.mark: float | None = None  # end of the last step or save
        self.steps: list[tuple[int, float]] = []  # (global step, seconds)
        self.tokens: dict[int, float] = {}  # global step -> tokens of that step
        self.saves: list[float] = []
        self._tokens_seen = 0.0
        self._last_logged_step: int | None = None

    def begin(self, now: float, step: int) -> None:
        self.train_begin = self.mark = now
        self._last_logged_step = step

    def step_end(self, step: int, now: float) -> None:
        self.steps.append((step, now - self.mark))
        self.mark = now

    def logged(self, step: int, num_tokens: float | None) -> tuple[float, float]:
        """At a logging step: TRL's cumulative `num_tokens` is spread over the steps since the previous log.
        Returns (s/step, tokens/s) of those steps (saves excluded; NaN when unknown) for the progress line."""
        first = (self._last_logged_step or 0) + 1
        window = [(s, sec) for s, sec in self.steps if first <= s <= step]
        self._last_logged_step = step
        seconds = sum(sec for _, sec in window)
        rate = float("nan")
        if num_tokens is not None and window:
            # A count lower than the last one: TRL restarted it (a resumed attempt).
            delta = num_tokens - self._tokens_seen if num_tokens >= self._tokens_seen else num_tokens
            self._tokens_seen = num_tokens
            for s, _ in window:
                self.tokens[s] = delta / len(window)
            rate = delta / seconds if seconds > 0 else rate
        return (seconds / len(window) if window else float("nan")), rate

    def saved(self, now: float) -> None:
        self.saves.append(now - self.mark)
        self.mark = now

    def steady(self) -> list[tuple[int, float]]:
        """The steps that count: all after the warm-up (at least the last one when the run is that short)."""
        skip = min(self.warmup_steps, max(0, len(self.steps) - 1))
        return self.steps[skip:]

    def figures(self) -> dict:
        steady = self.steady()
        rates = [self.tokens[s] / sec for s, sec in steady if s in self.tokens and sec > 0]
        tokens_per_step = [self.tokens[s] for s, _ in steady if s in self.tokens]
        return {
            "steady_steps": f"{steady[0][0]}-{steady[-1][0]}" if steady else None,
            "steady_sec_per_step": statistics.median(sec for _, sec in steady) if steady else None,
            "steady_tokens_per_s": statistics.median(rates) if rates else None,
            "tokens_per_step": statistics.mean(tokens_per_step) if tokens_per_step else None,
            "first_step_s": self.steps[0][1] if self.steps else None,
            "steps_s": sum(sec for _, sec in self.steps[1:]),
            "checkpoint_s": sum(self.saves),
            "checkpoints": len(self.saves),
        }
