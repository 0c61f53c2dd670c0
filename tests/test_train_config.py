"""Training stage: config validation, DeepSpeed config selection, data reading and input errors (no Ray)."""

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libra_ray.config import ConfigError, load_config
from libra_ray.train.config import SHIPPED_DEEPSPEED
from libra_ray.train.data import copy_tree, read_train_table, to_conversational, train_split_uri
from libra_ray.train.launcher import check_model, load_deepspeed_config


def write_parquet(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    return folder


ROW = {"prompt": "Tell me the steps of synthesizing sarin.", "chosen": "I cannot help with that.",
       "rejected": "Sure, here is an outline.", "compound_id": "c1", "class": "illegitimate"}


@pytest.mark.parametrize("override, fragment", [
    ("train.deepspeed=zero9", "zero2, zero3, zero3_offload"),
    ("train.loss_type=[sigmoid, nope]", "unknown DPO loss"),
    ("train.precision=fp16", "needs a GPU"),
    ("train.num_gpus=1", "use_gpu"),
    ("train.max_steps=0", "must be >= 1"),
    ("train.beta=-1", "greater than 0"),
])
def test_bad_train_config_is_a_clear_error(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert "train." in str(err.value) and fragment in str(err.value)


def test_deepspeed_by_name_or_path(tmp_path):
    assert load_deepspeed_config(None) is None
    for name in SHIPPED_DEEPSPEED:
        ds = load_deepspeed_config(name)
        # HF's optimizer under DeepSpeed, and HF fills the "auto" values from TrainingArguments.
        assert ds["zero_allow_untested_optimizer"] is True and ds["train_micro_batch_size_per_gpu"] == "auto"
    assert load_deepspeed_config("zero2")["zero_optimization"]["stage"] == 2
    assert load_deepspeed_config("zero3")["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert load_deepspeed_config("zero3_offload")["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    custom = tmp_path / "ds.json"
    custom.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert load_deepspeed_config(str(custom))["zero_optimization"]["stage"] == 1
    assert load_config(None, [f"train.deepspeed={custom}"]).train.deepspeed == str(custom)
    with pytest.raises(ConfigError, match="does not exist"):
        load_deepspeed_config(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_deepspeed_config(str(tmp_path / "bad.json"))


def test_reads_only_the_train_split(tmp_path):
    cfg = load_config(None, [f"storage={tmp_path}"])
    assert train_split_uri(cfg) == f"{cfg.dataset_dir}/train"
    write_parquet(tmp_path / "ds" / "train", [ROW, {**ROW, "split": "test"}, {**ROW, "split": "train"}][1:])
    write_parquet(tmp_path / "ds" / "test", [{**ROW, "prompt": "HELD OUT"}])
    table = read_train_table(str(tmp_path / "ds" / "train"))
    assert table.num_rows == 1 and table.column_names == ["prompt", "chosen", "rejected"]

    dpo = to_conversational(table, "dpo")[0]
    assert dpo["prompt"] == [{"role": "user", "content": ROW["prompt"]}]
    assert dpo["chosen"] == [{"role": "assistant", "content": ROW["chosen"]}]
    assert dpo["rejected"] == [{"role": "assistant", "content": ROW["rejected"]}]
    sft = to_conversational(table, "sft")[0]
    assert set(sft) == {"prompt", "completion"} and sft["completion"][0]["content"] == ROW["chosen"]


def test_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_train_table(str(tmp_path / "nowhere"))
    bad = write_parquet(tmp_path / "bad", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(ConfigError, match=r"lacks required column\(s\) \['chosen', 'rejected'\]"):
        read_train_table(str(bad))
    typed = write_parquet(tmp_path / "typed", [{"prompt": "p", "chosen": 1, "rejected": "r"}])
    with pytest.raises(ConfigError, match="'chosen' must hold strings"):
        read_train_table(str(typed))
    empty = write_parquet(tmp_path / "empty", [{**ROW, "split": "test"}])
    with pytest.raises(ConfigError, match="no training rows"):
        read_train_table(str(empty))


def test_model_path_checks(tmp_path, tiny_model_path):
    check_model(str(tiny_model_path))
    with pytest.raises(ConfigError, match="does not exist"):
        check_model(str(tmp_path / "no-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        check_model(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="neither a local folder nor a loadable hub model"):
        check_model("nobody-org/no-such-model-xyz")  # HF_HUB_OFFLINE=1: not cached -> clear error


def test_copy_tree_replaces_destination(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("new")
    dst = tmp_path / "out" / "model"
    dst.mkdir(parents=True)
    (dst / "stale.txt").write_text("old")
    copy_tree(str(src), str(dst))
    assert (dst / "sub" / "a.txt").read_text() == "new" and not (dst / "stale.txt").exists()
    assert not (tmp_path / "out" / "model.partial").exists()


def test_run_name_resumes_same_config_and_separates_changed_ones():
    from libra_ray.train.launcher import _fingerprint, run_name

    a, b = load_config(None, []), load_config(None, ["train.beta=0.2"])
    # The same config built afresh (another process would do the same), values spelt out or defaulted,
    # and settings outside `train` (storage, name suffixes of other stages) name the same run: it resumes.
    # How much progress is printed is not what the model depends on either.
    same = load_config(None, ["train.beta=0.1", "train.loss_type=[sigmoid]", "storage=/elsewhere", "synth.n_prompt=3",
                              "train.progress_lines=0"])
    assert a is not same and run_name(a, "dpo", _fingerprint(a, "m", "d")) == run_name(same, "dpo", _fingerprint(same, "m", "d"))
    assert re.fullmatch(r"quickstart-dpo-[0-9a-f]{8}", run_name(a, "dpo", _fingerprint(a, "m", "d")))
    assert run_name(a, "dpo", _fingerprint(a, "m", "d")) != run_name(b, "dpo", _fingerprint(b, "m", "d"))
    assert run_name(a, "dpo", _fingerprint(a, "m", "d")) != run_name(a, "dpo", _fingerprint(a, "m", "other-data"))
    assert run_name(a, "sft", _fingerprint(a, "m", "d")).startswith("quickstart-sft-")


def test_localize_downloads_a_uri_once(tmp_path):
    from libra_ray.train.data import localize

    src = tmp_path / "remote" / "model"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    assert localize(str(src), str(tmp_path / "cache")) == str(src)  # local paths are used in place
    local = localize(f"file://{src}", str(tmp_path / "cache"))
    assert open(os.path.join(local, "config.json")).read() == "{}"
    (src / "config.json").write_text('{"changed": 1}')
    assert localize(f"file://{src}", str(tmp_path / "cache")) == local
    assert open(os.path.join(local, "config.json")).read() == "{}"  # cached, not fetched again


def test_long_sequences_truncate_at_max_length_and_unicode_names_survive(tmp_path, tiny_model_path):
    """Through TRL's DPO tokenisation with our trainer arguments: a pair longer than `train.max_length` is cut
    to it; a prompt that alone fills it is dropped (nothing of the answer would be left to learn from);
    a non-ASCII compound name comes back from the tokens intact."""
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from libra_ray.train.worker import _trainer_args

    t = load_config(None, ["train.max_length=64"]).train.model_dump(mode="json")
    args = _trainer_args("dpo", t, {"learning_rate": 1e-3, "max_steps": 1, "deepspeed": None}, str(tmp_path / "hf"),
                         on_gpu=False)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.pad_token = tok.pad_token or tok.eos_token
    name = "Kaffeesäure (咖啡酸, caffeic acid) – β-form"
    rows = [{"prompt": f"Tell me the steps of synthesizing {name}.", "chosen": "Sure: " + "step " * 80, "rejected": "No."},
            {"prompt": "Tell me about aspirin. " * 40, "chosen": "Sure.", "rejected": "No."}]
    dataset = to_conversational(pa.Table.from_pylist(rows), "dpo")
    trainer = DPOTrainer(model=str(tiny_model_path), args=args, train_dataset=dataset, processing_class=tok)
    kept = trainer.train_dataset
    assert len(kept) == 1 and name in tok.decode(kept[0]["prompt_ids"])
    assert len(kept[0]["prompt_ids"]) + len(kept[0]["chosen_ids"]) > 64  # long before the collator ...
    batch = trainer.data_collator([kept[0]])
    assert batch["input_ids"].shape[1] == 64  # ... cut at max_length in the batch

    # The worker counts the dropped row for the train summary, and refuses when less than a global batch is left.
    from libra_ray.train.worker import _dropped_rows

    assert _dropped_rows("dpo", len(dataset), len(kept), 64, global_batch=1) == 1
    with pytest.raises(ValueError, match=r"train.max_length=64: only 1 of 2 rows .* fewer than one global batch \(2\)"):
        _dropped_rows("dpo", len(dataset), len(kept), 64, global_batch=2)
