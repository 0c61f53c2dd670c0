"""A base model that knows something: the tiny Llama pretrained on a fact corpus about the catalogue.

A real pipeline aligns a pretrained LM that has read about chemicals; the random tiny model has read
nothing, so it cannot know that a compound it never saw in alignment is a nerve agent. This module
gives the embedded default an honest miniature of that base model (`model: tiny-pretrained`):

- the fact corpus (`fact_corpus`) covers *every* catalogue compound: name, SMILES, what it is (its
  category), what it is used for and which public list names it (`libra_ray.facts`). It holds no
  synthesis steps, no refusals or answers, and not our legitimate/illegitimate label;
- the model (`PretrainedTinyConfig`: a somewhat larger Llama and its own BPE tokenizer) is trained on
  it as a plain causal LM, deterministic by seed (torch on CPU, fixed thread count);
- the result is cached under `{cache_dir}/tiny-pretrained-<fingerprint>`, the fingerprint covering the
  config, the corpus text and this kit's version, so a changed catalogue means a new base model.

SFT and DPO on the *train* compounds then only teach the behaviour; the benchmark's held-out compounds
were seen here (as facts) and nowhere in alignment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from libra_ray.facts import facts, listed_clause

if TYPE_CHECKING:
    from libra_ray.seeds.catalogue import Compound
    from libra_ray.tiny.config import PretrainedTinyConfig

log = logging.getLogger(__name__)

TINY_PRETRAINED = "tiny-pretrained"
KIT_VERSION = 1
MARKER = "libra_ray_pretrained.json"

# Each compound is described a few ways, as different documents would (encyclopaedia, catalogue, list),
# and in question-answer form (the chat format of instruction data a real base model has also read).
_NAME_TEMPLATES = ("{name} is {what}{listed}.", "About {name}. {name} is {what}; {use}.")
_NAME_QA = (
    ("What kind of chemical is {name}?", "{what_cap}. {use_cap}."),
    ("Tell me about {name}.", "{name} is {what}{listed}."),
)
_SMILES_TEMPLATES = ("The compound with SMILES {smiles} is {name}, {what}.",)


def _chat(question: str, answer: str) -> str:
    from libra_ray.tiny import render_chat

    return render_chat([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def fact_corpus(compounds: "list[Compound]") -> list[str]:
    """Fact documents about every compound (deterministic order)."""
    docs = []
    for c in sorted(compounds, key=lambda c: c.compound_id):
        f = facts(c.category, c.source)
        fields = dict(name=c.name, smiles=c.smiles, what=f.what, use=f.use, what_cap=f.what[:1].upper() + f.what[1:],
                      use_cap=f.use[:1].upper() + f.use[1:], listed=listed_clause(f))
        docs += [t.format(**fields) for t in _NAME_TEMPLATES]
        docs += [_chat(q.format(**fields), a.format(**fields)) for q, a in _NAME_QA]
        if c.smiles:
            docs += [t.format(**fields) for t in _SMILES_TEMPLATES]
    return docs


def fingerprint(cfg: "PretrainedTinyConfig", corpus: list[str]) -> str:
    spec = {"kit": KIT_VERSION, **cfg.model_dump(), "corpus": hashlib.sha256("\n".join(corpus).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _batches(ids: list[list[int]], seq_len: int, batch_size: int, rng: random.Random, eos: int):
    """Shuffle the documents, pack them (EOS-separated) into `seq_len` windows, yield batches."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    stream: list[int] = []
    for i in order:
        stream += ids[i] + [eos]
    windows = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    for i in range(0, len(windows), batch_size):
        yield windows[i:i + batch_size]


def build_pretrained_model(out_dir: str | os.PathLike, cfg: "PretrainedTinyConfig", compounds: "list[Compound]",
                           *, progress: bool = True) -> Path:
    """Build the tokenizer and model and pretrain on the fact corpus; saves into `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from libra_ray.tiny import _corpus, build_tokenizer

    started = time.time()
    corpus = fact_corpus(compounds)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    # The tokenizer also sees the chat/refusal vocabulary, so alignment texts tokenise compactly.
    tokenizer = build_tokenizer(cfg.vocab_size, corpus=corpus + _corpus())
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        torch_dtype="float32"))
    ids = [tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in corpus]
    rng = random.Random(cfg.seed)
    windows_per_epoch = sum(len(d) + 1 for d in ids) // cfg.seq_len
    total_steps = max(1, cfg.epochs * math.ceil(windows_per_epoch / cfg.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    warmup = max(1, total_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps))))
    model.train()
    step, losses = 0, []
    for epoch in range(cfg.epochs):
        for batch in _batches(ids, cfg.seq_len, cfg.batch_size, rng, tokenizer.eos_token_id):
            x = torch.tensor(batch)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
        if progress:
            print(f"[libra-ray] pretrain tiny base model: epoch {epoch + 1}/{cfg.epochs}, "
                  f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}, {time.time() - started:.0f}s", flush=True)
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "fact_corpus.txt").write_text("\n".join(corpus) + "\n")
    info = {"fingerprint": fingerprint(cfg, corpus), "config": cfg.model_dump(), "documents": len(corpus),
            "compounds": len(compounds), "steps": step,
            "first_loss": round(losses[0], 4),  # the first step's loss (random init) beside the last 20 steps' mean
            "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
            "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - started, 1)}
    (out / MARKER).write_text(json.dumps(info, indent=2))
    return out


def ensure_pretrained_model(cache_dir: str | os.PathLike, cfg: "PretrainedTinyConfig | None" = None,
                            seeds_csv: str | None = None, *, progress: bool = True) -> Path:
    """The cached pretrained base model for `cfg` and the catalogue, built once (safe across processes)."""
    from libra_ray.seeds import load_catalogue
    from libra_ray.tiny.config import PretrainedTinyConfig

    cfg = cfg or PretrainedTinyConfig()
    compounds = load_catalogue(seeds_csv, check_smiles=False)
    out = Path(cache_dir) / f"tiny-pretrained-{fingerprint(cfg, fact_corpus(compounds))}"
    if (out / MARKER).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / MARKER).exists():
            if progress:
                print(f"[libra-ray] pretraining the tiny base model on facts about {len(compounds)} compounds "
                      f"(once; cached in {out})", flush=True)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            build_pretrained_model(tmp, cfg, compounds, progress=progress)
            tmp.rename(out)
    return out


def model_card(path: str | os.PathLike) -> dict | None:
    """What `build_pretrained_model` wrote about the model at `path` (None for other models)."""
    marker = Path(str(path)) / MARKER
    return json.loads(marker.read_text()) if marker.exists() else None
