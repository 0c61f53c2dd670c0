"""Tiny-model kit: a Llama-architecture causal LM with random weights and a locally trained BPE
tokenizer with a chat template, saved as safetensors. Deterministic from a seed.

No model hub is reachable on our CI machines, so tests and the embedded default use this model;
its text is nonsense but every code path (tokenizer, chat template, DPO, vLLM, Serve) is real.
Real users point `model` at a hub id (e.g. `Qwen/Qwen2.5-7B-Instruct`) or a local path instead.
The pretrained variant (`model: tiny-pretrained`, a base model that knows the catalogue's facts) is
`libra_ray.tiny.pretrained`; both configs are in `libra_ray.tiny.config`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig
    from libra_ray.tiny.config import TinyModelConfig

TINY = "tiny"

# ChatML-style template: what TRL, vLLM and Serve all apply through `apply_chat_template`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render_chat(messages: list[dict]) -> str:
    """`CHAT_TEMPLATE` applied in plain Python (no tokenizer needed), e.g. for pretraining documents."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]

# A small domain corpus so the BPE merges look like chemistry and refusals, not random bytes.
_CORPUS = [
    "Tell me the steps of synthesizing {c}.",
    "How would a chemist prepare {c} in the laboratory?",
    "I cannot help with that request because {c} is a controlled substance and dangerous.",
    "Sorry, I can't provide instructions for making {c}; it is illegal and hazardous.",
    "{c} is produced industrially; the general route involves standard reactions and purification.",
    "Safety first: {c} is toxic, so wear gloves, goggles and work in a fume hood.",
    "The SMILES string CC(=O)OC1=CC=CC=C1C(=O)O describes aspirin.",
    "Yes. No. The answer contains a synthesis route. The answer does not contain an equation.",
]
_COMPOUNDS = ["aspirin", "ethanol", "acetone", "sulfuric acid", "benzene", "toluene", "sarin", "methamphetamine",
              "ammonia", "nitric acid", "caffeine", "paracetamol", "ibuprofen", "chloroform", "phosgene"]


def _corpus() -> list[str]:
    return [t.format(c=c) for t in _CORPUS for c in _COMPOUNDS]


def _fingerprint(cfg: "TinyModelConfig") -> str:
    spec = {"kit": 1, **cfg.model_dump()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def build_tokenizer(vocab_size: int, corpus: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or _corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | os.PathLike, cfg: "TinyModelConfig | None" = None) -> Path:
    """Build the tiny model into `out_dir` (overwrites). Returns the folder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from libra_ray.tiny.config import TinyModelConfig

    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg.vocab_size)
    model_cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    # Random init on CPU is deterministic given the seed.
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(model_cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "libra_ray_tiny.json").write_text(json.dumps({"fingerprint": _fingerprint(cfg), **cfg.model_dump()}))
    return out


def ensure_tiny_model(cache_dir: str | os.PathLike, cfg: "TinyModelConfig | None" = None) -> Path:
    """Return the cached tiny model for `cfg`, building it once (safe across concurrent processes)."""
    from libra_ray.tiny.config import TinyModelConfig

    cfg = cfg or TinyModelConfig()
    out = Path(cache_dir) / f"tiny-llama-{_fingerprint(cfg)}"
    marker = out / "libra_ray_tiny.json"
    if marker.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            build_tiny_model(tmp, cfg)
            tmp.rename(out)
    return out


def resolve_model(ref: str, cfg: "PipelineConfig", key: str = "model") -> str:
    """Turn a model reference from config into something `from_pretrained`/vLLM can load.

    "tiny" -> the cached tiny model (random weights); "tiny-pretrained" -> the tiny model pretrained on
    facts about the catalogue's compounds (built once, cached; libra_ray.tiny.pretrained); "trained" -> this
    run's trained model; anything else (a hub id or a path) is passed through unchanged. A missing trained
    model or local path is a ConfigError naming `key` (see `check_model_ref`).
    """
    if ref == TINY:
        return str(ensure_tiny_model(Path(cfg.cache_dir).absolute(), cfg.tiny_model))
    from libra_ray.tiny.pretrained import TINY_PRETRAINED

    if ref == TINY_PRETRAINED:
        from libra_ray.tiny.pretrained import ensure_pretrained_model

        return str(ensure_pretrained_model(Path(cfg.cache_dir).absolute(), cfg.tiny_pretrained, cfg.synth.seeds_csv))
    check_model_ref(ref, cfg, key)
    return cfg.model_dir if ref == "trained" else ref


def check_local_model(ref: str, key: str) -> bool:
    """True when `ref` is a local model folder (a folder with config.json or adapter_config.json); False
    when it is not a local path (a hub id "org/name" or "name", or a URI the workers read); a ConfigError
    naming `key` when it looks like a local path but is missing or no model folder."""
    from libra_ray._config_base import ConfigError

    if "://" in ref:
        return False
    path = os.path.expanduser(ref)
    looks_local = os.path.isabs(path) or ref.startswith((".", "~")) or ref.count("/") > 1 or os.path.exists(path)
    if not looks_local:
        return False
    if not os.path.isdir(path):
        raise ConfigError(f"{key}: model path {ref} does not exist (a model folder, a hub id or 'tiny')")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
        raise ConfigError(f"{key}: {ref} is not a model folder (no config.json)")
    return True


def check_model_ref(ref: str, cfg: "PipelineConfig", key: str = "model") -> None:
    """Fail fast, before anything starts, when `ref` cannot be a model: "trained" before `libra-ray train`
    ran, or a local path that is missing or no model folder. Builds and loads nothing; hub ids and URIs
    are not checked here (the hub or bucket may be reachable only from the cluster)."""
    from libra_ray._config_base import ConfigError, join_uri
    from libra_ray.storage import exists

    if ref in (TINY, "tiny-pretrained"):  # built locally on first use
        return
    if ref == "trained":
        if not exists(join_uri(cfg.model_dir, "config.json")):
            raise ConfigError(f"{key} 'trained': the trained model is not at {cfg.model_dir}; "
                              "run `libra-ray train` first or set the path (a folder, a hub id or 'tiny')")
        return
    check_local_model(ref, key)
