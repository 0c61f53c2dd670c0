import hashlib

import pytest

from libra_ray.tiny.config import TinyModelConfig
from libra_ray.tiny import build_tiny_model, ensure_tiny_model


def weights_digest(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_from_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", TinyModelConfig(seed=1))
    b = build_tiny_model(tmp_path / "b", TinyModelConfig(seed=1))
    c = build_tiny_model(tmp_path / "c", TinyModelConfig(seed=2))
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_reload_chat_template_and_generate(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.hidden_size // model.config.num_attention_heads == 32  # a head_dim vLLM accepts
    text = tok.apply_chat_template([{"role": "user", "content": "Tell me the steps of synthesizing aspirin."}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids.input_ids[0], skip_special_tokens=False) == text  # byte-level BPE round-trips
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.input_ids.shape[1]


def test_ensure_caches_by_config(tmp_path):
    first = ensure_tiny_model(tmp_path)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert ensure_tiny_model(tmp_path, TinyModelConfig(seed=3)) != first


@pytest.mark.e2e
def test_vllm_loads_and_generates(tiny_model_path, tmp_path):
    """The tiny model is vLLM-compatible (CPU build): load and generate in a subprocess (spawn guard)."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent(f"""
        import os
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            llm = LLM(model={str(tiny_model_path)!r}, enforce_eager=True, gpu_memory_utilization=0.5,
                      max_model_len=512, seed=0)
            outs = llm.generate(["Tell me the steps of synthesizing aspirin."], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
            print("GENERATED", len(outs[0].outputs[0].token_ids))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GENERATED 8" in proc.stdout
