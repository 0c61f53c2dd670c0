"""The transformers engine: `model.generate` on left-padded batches, with per-request sampling.

Every request in a batch keeps its own temperature, top_p and seed: the batch is decoded with one
`generate` call whose logits processor draws each sampled row's token from that row's own seeded
`torch.Generator` (greedy rows take the argmax). A request's tokens therefore depend only on its own
prompt and parameters, never on what it was batched with. Starts in seconds; fits tests and tiny models.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from libra_ray.engines.base import Engine, eos_ids, prepare_tokenizer
from libra_ray.engines.identity import resolve_dtype
from libra_ray.engines.params import DeltaText, GenParams, result, truncate_at_stop


class TransformersEngine(Engine):
    def __init__(self, model_path: str, max_model_len: int = 1024, num_threads: int | None = 1,
                 device: str | None = None, dtype: str = "auto"):
        """`dtype`: the weights' dtype; "auto" = bfloat16 on CUDA, float32 on CPU (`resolve_dtype`, as vLLM)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_path))
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, self.dtype))
        self.model = self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_model_len
        self.max_model_len = min(max_model_len, limit)
        self.eos_ids = eos_ids(self.tokenizer, self.model.generation_config)

    # ---- decoding settings
    def _generator(self, params: GenParams):
        if params.greedy:
            return None
        gen = self.torch.Generator(device=self.device)
        if params.seed is None:
            gen.seed()  # fresh entropy: an unseeded request is not reproducible, as in the OpenAI API
        else:
            gen.manual_seed(params.seed)
        return gen

    def _gen_kwargs(self, params: list[GenParams], max_new_tokens: int) -> dict:
        from transformers import GenerationConfig, LogitsProcessorList

        # An explicit config: the engine, not the checkpoint's generation defaults, decides how to decode.
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids))
        sampler = _PerRequestSampler(self.torch, params, [self._generator(p) for p in params])
        return {"generation_config": config, "logits_processor": LogitsProcessorList([sampler])}

    def _finish(self, new_ids: list[int], prompt_len: int, params: GenParams, budget: int) -> dict:
        """Trim one generated sequence to its own budget / EOS / stop strings."""
        ids = new_ids[:budget]
        reason = "length"
        for i, tok in enumerate(ids):
            if tok in self.eos_ids:
                ids, reason = ids[:i], "stop"
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, hit = truncate_at_stop(text, params.stop)
        if hit:
            reason = "stop"
        return result(text, prompt_len, ids, reason)

    # ---- batch
    def _generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[dict]:
        torch = self.torch
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.device)
        budgets = [self.budget(t, p) for t, p in zip(prompts, params)]
        with torch.inference_mode():
            seqs = self.model.generate(**batch, **self._gen_kwargs(params, max(budgets)))
        width = batch["input_ids"].shape[1]
        return [self._finish(seqs[row, width:].tolist(), len(prompts[row]), params[row], budgets[row])
                for row in range(len(prompts))]

    # ---- scoring
    def loglikelihood_batch(self, requests: list[tuple[list[int], list[int]]]) -> list[float]:
        """One forward pass over the right-padded batch; each continuation's token log-probs summed."""
        torch = self.torch
        seqs = [ctx + cont for ctx, cont in requests]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
        with torch.inference_mode():
            logprobs = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        out = []
        for row, (ctx, cont) in enumerate(requests):
            # The token at position t is predicted by the logits at position t - 1.
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=self.device)
            tok = torch.tensor(cont, device=self.device)
            out.append(float(logprobs[row, pos, tok].sum()))
        return out

    # ---- streaming
    async def stream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[dict]:
        """Yield {"delta": str} as tokens arrive, then a final result dict (text = full answer)."""
        from transformers import StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        params.check()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop_event = threading.Event()
        done = object()

        def send(item):  # from the generate thread; the consumer's loop may be gone (client left)
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                stop_event.set()

        class _Streamer(BaseStreamer):
            first = True

            def put(self, value):  # the first call carries the prompt
                if self.first:
                    self.first = False
                    return
                for tok in value.reshape(-1).tolist():
                    send(tok)

            def end(self):
                send(done)

        class _Cancel:  # a StoppingCriteria: stops generation when the client went away or a stop was seen
            def __call__(self, input_ids, scores, **kw):
                return stop_event.is_set()

        input_ids = self.torch.tensor([prompt_ids], device=self.device)
        budget = self.budget(prompt_ids, params)
        kwargs = self._gen_kwargs([params], budget)

        def work():
            try:
                with self.torch.inference_mode():
                    self.model.generate(input_ids=input_ids, attention_mask=self.torch.ones_like(input_ids),
                                        streamer=_Streamer(), stopping_criteria=StoppingCriteriaList([_Cancel()]),
                                        **kwargs)
            except Exception as err:  # surfaced to the caller below
                send(err)
                send(done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        ids: list[int] = []
        deltas = DeltaText(params.stop)
        reason = "length"
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, Exception):
                    raise item
                if reason == "stop" or len(ids) >= budget:
                    continue
                if item in self.eos_ids:
                    reason = "stop"
                    stop_event.set()
                    continue
                ids.append(item)
                text, hit = truncate_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop)
                delta = deltas.update(text)
                if delta:
                    yield {"delta": delta}
                if hit:
                    reason = "stop"
                    stop_event.set()
        finally:
            stop_event.set()
        final = self._finish(ids, len(prompt_ids), params, budget)  # exactly what generate_batch answers
        delta = deltas.update(final["text"], final=True)
        if delta:
            yield {"delta": delta}
        if reason == "stop":
            final["finish_reason"] = "stop"
        yield final


class _PerRequestSampler:
    """A logits processor: row i's next token is drawn with row i's temperature, top_p and generator.

    Rows without a generator (greedy) are left alone, so `generate(do_sample=False)` takes their argmax;
    a sampled row's scores become -inf except for the drawn token, which the argmax then picks.
    """

    def __init__(self, torch, params: list[GenParams], generators: list):
        self.torch, self.params, self.generators = torch, params, generators

    def __call__(self, input_ids, scores):
        torch = self.torch
        for row, (p, gen) in enumerate(zip(self.params, self.generators)):
            if gen is None:
                continue
            probs = torch.softmax(scores[row].float() / p.temperature, dim=-1)
            if p.top_p < 1:  # nucleus: keep the most likely tokens until their mass reaches top_p
                sorted_probs, order = probs.sort(descending=True)
                sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) > p.top_p] = 0
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            token = torch.multinomial(probs, 1, generator=gen)
            picked = torch.full_like(scores[row], float("-inf"))
            picked[token] = 0
            scores[row] = picked
        return scores
