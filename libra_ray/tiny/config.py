"""Config of the tiny-model kit: the tiny Llama built locally and its pretrained variant (light imports only)."""

from __future__ import annotations

from pydantic import Field, field_validator

from libra_ray._config_base import StrictModel


class TinyModelConfig(StrictModel):
    """The tiny Llama built locally (no hub here). Used wherever a model is `"tiny"`."""

    seed: int = Field(default=0, description="weight-init seed (the model is deterministic from its config)")
    hidden_size: int = Field(default=128, ge=32, description="Llama hidden size")
    num_layers: int = Field(default=2, ge=1, description="decoder layers")
    num_heads: int = Field(default=4, ge=1, description="attention heads (hidden_size / num_heads must be a head "
                           "size vLLM's CPU attention supports)")
    num_kv_heads: int = Field(default=2, ge=1, description="key/value heads (grouped-query attention)")
    intermediate_size: int = Field(default=256, ge=8, description="MLP width")
    vocab_size: int = Field(default=1024, ge=300, description="byte-level BPE vocabulary size")
    max_position_embeddings: int = Field(default=1024, ge=64, description="longest context")

    @field_validator("num_heads")
    @classmethod
    def _vllm_head_dim(cls, heads: int, info) -> int:
        hidden = info.data.get("hidden_size", 128)
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_heads {heads}")
        head_dim = hidden // heads
        # vLLM's CPU attention rejects other head sizes (see ENVIRONMENT.md).
        if head_dim not in (32, 64, 80, 96, 112, 128, 256):
            raise ValueError(f"head_dim {head_dim} (hidden_size/num_heads) is not supported by vLLM; use 32, 64, 80, 96, 112, 128 or 256")
        return heads


class PretrainedTinyConfig(TinyModelConfig):
    """The tiny Llama pretrained on facts about every catalogue compound (`model: tiny-pretrained`):
    the embedded default's base model, which knows what a compound is (see libra_ray.tiny.pretrained)."""

    hidden_size: int = Field(default=128, ge=32, description="Llama hidden size")
    num_layers: int = Field(default=3, ge=1, description="decoder layers")
    num_heads: int = Field(default=4, ge=1, description="attention heads")
    num_kv_heads: int = Field(default=2, ge=1, description="key/value heads (grouped-query attention)")
    intermediate_size: int = Field(default=384, ge=8, description="MLP width")
    vocab_size: int = Field(default=2048, ge=300, description="byte-level BPE vocabulary size")
    epochs: int = Field(default=10, ge=1, description="passes over the fact corpus")
    batch_size: int = Field(default=32, ge=1, description="packed windows per step")
    seq_len: int = Field(default=128, ge=16, description="tokens per packed window")
    learning_rate: float = Field(default=3e-3, gt=0, description="peak AdamW learning rate (warmup, cosine decay)")
    num_threads: int = Field(default=2, ge=1, description="torch CPU threads (fixed, for reproducible floats)")
