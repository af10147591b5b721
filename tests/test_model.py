"""Tiny offline model: tokenizer, save/reload, warm start, build cache and policy loading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from memrl.model import loading, warmstart
from memrl.model.loading import ModelUnavailableError, load_policy
from memrl.model.tiny import FORMAT_TAGS, build_tiny_model, train_bpe_tokenizer
from memrl.model.warmstart import (
    IGNORE_INDEX,
    SPEC_FILE,
    cached_tiny_model,
    encode_example,
    spec_key,
    warm_start,
)

SYSTEM = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
TEXTS = [
    SYSTEM,
    "Tom has 12 apples. He buys 7 more. How many apples does Tom have now?",
    "<reasoning>\n12 + 7 = 19\n</reasoning>\n<answer>\n19\n</answer>\n",
    "Anna has 30 books. She gives away 4. How many books does Anna have left?",
    "<reasoning>\n30 - 4 = 26\n</reasoning>\n<answer>\n26\n</answer>\n",
]
SIZES = dict(vocab_size=300, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
             max_position_embeddings=128)
ROUND_TRIP = [
    "<reasoning>\nTom has 12 + 7 = 19 apples.\n</reasoning>\n<answer>\n19\n</answer>\n",
    "  two  spaces, tabs\tand ünïcödé 3.14 × 2 = 6.28 $1,000",
    "text<answer>glued</answer>tags 0123456789",
]


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TEXTS, **SIZES)


def test_qwen2_tiny_model_has_its_family_s_biases_tokenizer_and_ids(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path, TEXTS, **SIZES, architecture="qwen2")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # transformers gives a qwen2 folder Qwen2's own tokenizer class (every digit its own token).
    assert type(model).__name__ == "Qwen2ForCausalLM" and type(tokenizer).__name__ == "Qwen2Tokenizer"
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.bias is not None and attention.o_proj.bias is None
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    pieces = [tokenizer.decode([i]) for i in tokenizer("12 + 7 = 19")["input_ids"]]
    assert [p.strip() for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "7", "1", "9"]
    for text in ROUND_TRIP + TEXTS:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert all(len(tokenizer(tag)["input_ids"]) == 1 for tag in FORMAT_TAGS)
    with pytest.raises(ValueError, match="architecture 'gpt2'"):
        build_tiny_model(tmp_path / "x", TEXTS, **SIZES, architecture="gpt2")


def test_tokenizer_ids_survive_save_and_reload(tmp_path: Path) -> None:
    tokenizer = train_bpe_tokenizer(TEXTS, 300)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in ROUND_TRIP + TEXTS:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert len(reloaded) == len(tokenizer) == 300
    assert reloaded.padding_side == "left"
    assert (reloaded.eos_token, reloaded.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_digit_runs_split_from_letters_and_tags_are_single_tokens(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("apples12 19", add_special_tokens=False)["input_ids"])
    # "12" and "19" occur in the training texts often enough to become single tokens.
    assert tokens[-3:] == ["12", "Ġ", "19"]
    assert "".join(tokens[:-3]) == "apples"
    for tag in FORMAT_TAGS:
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1


def test_split_digits_gives_one_token_per_digit() -> None:
    tokenizer = train_bpe_tokenizer(TEXTS, 300, split_digits=True)
    ids = tokenizer("x2026 12", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["x", "2", "0", "2", "6", "Ġ", "1", "2"]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_encode_round_trip_keeps_tags(tiny_dir: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_dropped_when_decoding(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tokenizer("<answer>\n5\n</answer>", add_special_tokens=False)["input_ids"]
    ids = [tokenizer.pad_token_id] + ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<answer>\n5\n</answer>"


def test_chat_template_renders_chatml(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    chat = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


def test_saved_model_is_tied_llama_with_matching_vocab(tiny_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer) == 300
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert (tiny_dir / "model.safetensors").is_file()


def test_same_seed_same_weights(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", TEXTS, **SIZES, seed=3)
    second = build_tiny_model(tmp_path / "b", TEXTS, **SIZES, seed=3)
    other = build_tiny_model(tmp_path / "c", TEXTS, **SIZES, seed=4)
    weights = [AutoModelForCausalLM.from_pretrained(d).state_dict() for d in (first, second, other)]
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(weights[0][key], weights[1][key])
    assert not torch.equal(weights[0][key], weights[2][key])


def test_encode_example_masks_the_prompt(tiny_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = _messages("Q")
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer("<answer>\n7\n</answer>\n", add_special_tokens=False)["input_ids"]
    input_ids, labels = encode_example(tokenizer, messages, "<answer>\n7\n</answer>\n", 128)
    assert input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    cut_ids, cut_labels = encode_example(tokenizer, messages, "<answer>\n7\n</answer>\n", len(prompt_ids) + 2)
    assert cut_ids == input_ids[: len(prompt_ids) + 2]
    assert cut_labels == labels[: len(prompt_ids) + 2]
    with pytest.raises(ValueError, match="max_length=5"):
        encode_example(tokenizer, messages, "x", 5)


def test_warm_start_learns_the_completion_and_saves(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m", TEXTS, **SIZES)
    completion = "<reasoning>\n12 + 7 = 19\n</reasoning>\n<answer>\n19\n</answer>\n"
    examples = [(_messages(TEXTS[1]), completion)] * 8
    stats = warm_start(folder, examples, steps=100, lr=1e-2, batch_size=4, log_every=30)
    assert stats["loss_after"] < 0.1 * stats["loss_before"]
    assert [step for step, _ in stats["losses"]] == [30, 60, 90, 100]

    model, tokenizer = load_policy(str(folder))
    prompt = tokenizer.apply_chat_template(_messages(TEXTS[1]), tokenize=False, add_generation_prompt=True)
    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=40, do_sample=False)
    new_tokens = out[0, batch["input_ids"].shape[1] :]
    assert tokenizer.decode(new_tokens, skip_special_tokens=True) == completion
    assert int(new_tokens[-1]) == tokenizer.eos_token_id
    assert (folder / "warmstart.json").is_file()


def test_warm_start_without_steps_keeps_weights(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "m", TEXTS, **SIZES)
    before = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    stats = warm_start(folder, [(_messages(TEXTS[1]), TEXTS[2])], steps=0)
    after = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert stats["losses"] == [] and stats["loss_after"] == stats["loss_before"]
    assert all(torch.equal(before[name], after[name]) for name in before)
    with pytest.raises(ValueError, match="steps"):
        warm_start(folder, [(_messages(TEXTS[1]), TEXTS[2])], steps=-1)


def test_cached_tiny_model_builds_once_per_spec(tmp_path: Path) -> None:
    calls = {"texts": 0}

    def make_texts() -> list[str]:
        calls["texts"] += 1
        return TEXTS

    def make_examples() -> list[tuple[list[dict[str, str]], str]]:
        return [(_messages(TEXTS[1]), TEXTS[2])]

    spec = {"model": SIZES, "warmstart": {"steps": 2, "batch_size": 1}, "data": "toy-v1"}
    first = cached_tiny_model(tmp_path, spec, make_texts, make_examples)
    weights_mtime = (first / "model.safetensors").stat().st_mtime_ns
    again = cached_tiny_model(tmp_path, spec, make_texts, make_examples)
    assert again == first == tmp_path / spec_key(spec)
    assert calls["texts"] == 1
    assert (first / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert (first / SPEC_FILE).is_file()

    changed = dict(spec, data="toy-v2")
    other = cached_tiny_model(tmp_path, changed, make_texts, make_examples)
    assert other != first and other.name == spec_key(changed)
    assert calls["texts"] == 2
    # Only finished folders and lock files are left: no staging folders.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted([first.name, other.name])


def test_habit_stage_runs_after_the_warm_start_and_a_shipped_base_is_used_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = {"first": 0, "habit": 0}

    def examples(stage: str, completion: str):
        def make() -> list[tuple[list[dict[str, str]], str]]:
            made[stage] += 1
            return [(_messages(TEXTS[1]), completion)] * 4
        return make

    spec = {"model": SIZES, "warmstart": {"steps": 60, "lr": 1e-2, "batch_size": 4},
            "habit": {"steps": 100, "lr": 1e-2, "batch_size": 4}, "data": "toy-habit"}
    with pytest.raises(ValueError, match="make_habit_examples"):
        cached_tiny_model(tmp_path / "cache", spec, lambda: TEXTS, examples("first", TEXTS[2]))
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(warmstart, "SHIPPED_BASES", shipped)
    folder = cached_tiny_model(tmp_path / "cache", spec, lambda: TEXTS, examples("first", TEXTS[2]),
                               examples("habit", TEXTS[4]))
    assert made == {"first": 1, "habit": 1}
    assert (folder / "warmstart.json").is_file() and (folder / warmstart.HABIT_STATS_FILE).is_file()
    # The second stage's data is what the model answers with at the end.
    model, tokenizer = load_policy(str(folder))
    prompt = tokenizer.apply_chat_template(_messages(TEXTS[1]), tokenize=False, add_generation_prompt=True)
    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=30, do_sample=False)
    assert tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True) == TEXTS[4]

    # A base shipped for this spec wins over the cache and is never rebuilt ...
    assert warmstart.shipped_base(spec) is None
    (shipped / spec_key(spec)).mkdir(parents=True)
    (shipped / spec_key(spec) / SPEC_FILE).write_text("{}")
    assert cached_tiny_model(tmp_path / "other-cache", spec, list, list, list) == shipped / spec_key(spec)
    assert not (tmp_path / "other-cache").exists()
    # ... unless the caller rebuilds it (memrl build-base).
    rebuilt = cached_tiny_model(tmp_path / "rebuild", spec, lambda: TEXTS, examples("first", TEXTS[2]),
                                examples("habit", TEXTS[4]), use_shipped=False)
    assert rebuilt == tmp_path / "rebuild" / spec_key(spec) and made == {"first": 2, "habit": 2}


def test_cached_tiny_model_rejects_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hidden_sise"):
        cached_tiny_model(tmp_path, {"model": {"hidden_sise": 8}}, list, list)
    assert list(tmp_path.iterdir()) == []


def test_spec_key_ignores_key_order() -> None:
    assert spec_key({"a": 1, "b": {"c": 2, "d": 3}}) == spec_key({"b": {"d": 3, "c": 2}, "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})
    assert len(spec_key({"a": 1})) == 16


def test_load_policy_local_folder(tiny_dir: Path) -> None:
    model, tokenizer = load_policy(str(tiny_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id == model.generation_config.pad_token_id


def test_load_policy_falls_back_to_eos_for_padding(tiny_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.generation_config.pad_token_id = None
    model.save_pretrained(tmp_path)
    model, tokenizer = load_policy(str(tmp_path))
    assert tokenizer.pad_token == "<|im_end|>"
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id


def test_load_policy_offline_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE") as info:
        load_policy("memrl-tests/no-such-model")
    assert time.perf_counter() - started < 5
    assert "memrl-tests/no-such-model" in str(info.value)
    assert "model.name_or_path=/path/to/folder" in str(info.value)


def test_load_policy_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "_hub_offline", lambda: False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda: False)
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        load_policy("memrl-tests/no-such-model")


def test_load_policy_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_policy(str(tmp_path / "absent"))


def test_load_policy_rejects_unknown_dtype(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="float33"):
        load_policy(str(tiny_dir), dtype="float33")
