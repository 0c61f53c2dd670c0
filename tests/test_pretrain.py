"""The pretrained tiny base model: its fact corpus (no labels, no procedures) and a deterministic, cached build."""

from __future__ import annotations

from pathlib import Path

from libra_ray.seeds import load_catalogue
from libra_ray.tiny.config import PretrainedTinyConfig
from libra_ray.tiny.pretrained import MARKER, ensure_pretrained_model, fact_corpus

TOY = PretrainedTinyConfig(hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1, intermediate_size=32,
                           vocab_size=320, epochs=8, batch_size=4, seq_len=32, num_threads=1,
                           max_position_embeddings=64)


def _toy_catalogue(tmp_path: Path) -> str:
    path = tmp_path / "cat.csv"
    path.write_text("compound_id,name,smiles,class,category,source\n"
                    "a,Alphazine,CCO,illegitimate,chemical weapon,CWC Schedule 1\n"
                    "b,Betanol,CCCO,legitimate,industrial,OECD HPV\n"
                    "c,Gammafen,CCN,illegitimate,controlled substance,DEA Schedule II\n"
                    "d,Deltose,OCC(O)CO,legitimate,pharmaceutical,WHO EML\n")
    return str(path)


def test_fact_corpus_covers_every_compound_with_facts_but_no_labels_or_behaviour():
    compounds = load_catalogue(None, check_smiles=False)
    corpus = fact_corpus(compounds)
    text = "\n".join(corpus)
    for c in compounds[::50]:
        assert c.name in text
    lowered = text.lower()
    for leak in ("legitimate", "illegitimate", "i'm sorry", "i can't", "i cannot", "step 1", "reflux"):
        assert leak not in lowered, leak
    assert "a chemical warfare agent" in text and "an industrial chemical" in text


def test_pretrained_model_is_cached_and_deterministic(tmp_path):
    import torch
    from safetensors.torch import load_file

    csv = _toy_catalogue(tmp_path)
    first = ensure_pretrained_model(tmp_path / "a", TOY, csv, progress=False)
    marker_time = (first / MARKER).stat().st_mtime_ns
    assert ensure_pretrained_model(tmp_path / "a", TOY, csv, progress=False) == first  # cached: not rebuilt
    assert (first / MARKER).stat().st_mtime_ns == marker_time
    second = ensure_pretrained_model(tmp_path / "b", TOY, csv, progress=False)
    assert second.name == first.name  # same fingerprint
    wa, wb = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # It learned something: the loss fell from the random-init level.
    import json

    info = json.loads((first / MARKER).read_text())
    assert info["compounds"] == 4 and info["steps"] >= 2
    assert info["final_loss"] < 0.8 * info["first_loss"], info  # first logged loss vs the last 20 steps' mean
    # A changed catalogue (or config) is a different base model.
    other = ensure_pretrained_model(tmp_path / "a", TOY.model_copy(update={"seed": 1}), csv, progress=False)
    assert other != first


def test_resolve_model_builds_the_pretrained_base(tmp_path):
    from libra_ray.config import load_config
    from libra_ray.tiny import resolve_model

    cfg = load_config(overrides=[f"cache_dir={tmp_path}", f"synth.seeds_csv={_toy_catalogue(tmp_path)}"])
    cfg = cfg.model_copy(update={"tiny_pretrained": TOY})
    path = Path(resolve_model("tiny-pretrained", cfg))
    assert (path / "config.json").is_file() and (path / MARKER).is_file() and path.parent == tmp_path
