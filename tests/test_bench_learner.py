"""The learner benchmark (bench/learner.py): token counts of the padded and packed layouts,
the padding share, the figures' round-by-round ratios and headline fields, the rounds' order,
and the bare steps' loss against memrl's on the same batch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bench import learner
from memrl.grpo.loss import LossSettings
from memrl.learner.distributed import free_port, set_rank_env
from memrl.learner.packing import pack_completions, packed_completion_logprobs
from memrl.learner.policy import LearnerSettings
from memrl.model.tiny import build_tiny_model
from memrl.types import RolloutBatch


def _batch() -> RolloutBatch:
    # One group of two completions sharing a 2-token prompt (left-padded to 3), then one more.
    prompt_ids = torch.tensor([[0, 7, 8], [0, 7, 8], [5, 6, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1]])
    completion_ids = torch.tensor([[3, 4, 0], [10, 0, 0], [11, 12, 13]])
    completion_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                        completion_ids=completion_ids, completion_mask=completion_mask,
                        behaviour_logprobs=torch.zeros(3, 3),
                        token_versions=torch.zeros(3, 3, dtype=torch.int64),
                        texts=[""] * 3, group_index=[0, 0, 1], record_ids=["a", "a", "b"],
                        weight_version=0)


def test_token_counts_and_padding_share():
    batch = _batch()
    counts = learner.token_counts(batch, micro_batch_size=3)
    # real: prompts 2 + 2 + 3, completions 2 + 1 + 3; padded: 3 rows x 6; packed: 2 rows x 6
    # packed: the shared prompt once (2) + 3 + completions 6 = 11 real of 12 positions
    # logits: padded from the last prompt position, 3 rows x (3 + 1); completion tokens 2 + 1 + 3
    # memrl's packed logits: columns 1-4 predict a completion token in some row, x 2 rows
    assert counts == {"real": 13, "padded": 18, "packed": 12, "packed_real": 11, "packed_logits": 8,
                      "padded_logits": 12, "completion": 6}
    assert [learner.logit_rows(v, counts) for v in ("bare padded", "memrl padded", "bare packed",
                                                    "memrl", "memrl Ray x2")] == [12, 12, 6, 8, 8]
    assert learner.pad_share(counts, packed=False) == pytest.approx(5 / 18)
    assert learner.pad_share(counts, packed=True) == pytest.approx(1 / 12)
    # one row per micro-batch: nothing shared, each row packed alone (6 + 3 + 6 positions)
    assert learner.token_counts(batch, micro_batch_size=1)["packed"] == 4 + 3 + 6


def test_learner_figures_compare_each_variant_with_the_bare_step_of_its_layout():
    seconds = {"bare padded": [2.0, 1.0, 3.0], "memrl padded": [1.0, 2.0, 3.0],
               "bare packed": [1.0, 0.5, 1.0], "memrl": [1.0, 0.5, 1.5]}
    figures = learner.learner_figures(seconds, real_tokens=1000)
    assert figures["bare padded"]["seconds"]["median"] == 2.0
    assert figures["memrl"]["tokens_per_s"] == pytest.approx(1000.0)
    # round by round: memrl / bare packed = 1, 1, 1.5; memrl padded / bare padded = 0.5, 2, 1
    assert figures["memrl"]["vs_bare"] == pytest.approx({"median": 1.0, "min": 1.0, "max": 1.5})
    assert figures["memrl padded"]["vs_bare"] == pytest.approx({"median": 1.0, "min": 0.5, "max": 2.0})
    assert figures["bare packed"]["vs_bare"] == pytest.approx({"median": 1.0, "min": 1.0, "max": 1.0})
    with pytest.raises(KeyError):
        learner.learner_figures({"memrl": [1.0]}, real_tokens=10)
    with pytest.raises(ValueError, match="memrl / bare packed: 2 numerator rounds but 3"):
        learner.learner_figures({"bare packed": [1.0, 1.0, 1.0], "memrl": [1.0, 1.0]}, 10)


def test_headline_ratios_their_ranges_and_the_goal():
    seconds = {"bare padded": [3.0, 3.0, 3.0], "memrl padded": [3.3, 3.0, 2.7],
               "bare packed": [1.0, 1.0, 1.0], "memrl": [1.2, 1.0, 1.05]}
    figures = learner.headline(seconds)
    assert figures["overhead_vs_bare"] == pytest.approx(1.05)
    assert figures["overhead_vs_bare_range"] == pytest.approx([1.0, 1.2])
    assert figures["overhead_identical_work"] == pytest.approx(1.0)
    assert figures["overhead_identical_work_range"] == pytest.approx([0.9, 1.1])
    # bare padded / memrl: 2.5, 3, 2.857
    assert figures["packing_speedup_vs_padded"] == pytest.approx(3 / 1.05)
    assert figures["packing_speedup_vs_padded_range"] == pytest.approx([2.5, 3.0])
    assert figures["overhead_goal"] == 1.10 and figures["overhead_goal_met"] is True
    slower = learner.headline({**seconds, "memrl": [1.2, 1.2, 1.0]})
    assert slower["overhead_vs_bare"] == pytest.approx(1.2) and slower["overhead_goal_met"] is False
    lines = learner.headline_lines(slower, "default", rounds=3)
    assert lines[0] == ("default overhead_vs_bare (memrl / bare packed): median 1.200, range "
                        "1.000-1.200 over 3 rounds; goal <= 1.10: NOT met")


def test_interleaved_rounds_rotate_the_first_variant_and_drop_the_warmup():
    order: list[str] = []
    variants = {name: (lambda name=name: order.append(name)) for name in "abc"}
    seconds = learner.interleaved(variants, rounds=3, warmup=1)
    assert order == list("abc" "bca" "cab" "abc")
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3, "c": 3}


# -- the bare steps against memrl's on one tiny model ---------------------------------------------
TEXTS = [f"{a} plus {b} is {a + b}" for a in range(9) for b in range(9)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TEXTS, vocab_size=300, hidden_size=32,
                            num_layers=2, num_heads=2, intermediate_size=64,
                            max_position_embeddings=64, seed=0)


def _groups_batch(groups: int, size: int, vocab: int) -> RolloutBatch:
    """``groups`` prompts (left-padded, uneven) with ``size`` completions each (right-padded)."""
    gen = torch.Generator().manual_seed(1)
    n, p, length = groups * size, 6, 5
    prompt_lens = torch.randint(2, p + 1, (groups,), generator=gen).repeat_interleave(size)
    completion_lens = torch.randint(1, length + 1, (n,), generator=gen)
    prompt_mask = (torch.arange(p) >= p - prompt_lens[:, None]).long()
    completion_mask = (torch.arange(length) < completion_lens[:, None]).long()
    prompts = torch.randint(3, vocab, (groups, p), generator=gen).repeat_interleave(size, dim=0)
    return RolloutBatch(prompt_ids=prompts * prompt_mask, prompt_mask=prompt_mask,
                        completion_ids=torch.randint(3, vocab, (n, length), generator=gen) * completion_mask,
                        completion_mask=completion_mask, behaviour_logprobs=torch.zeros(n, length),
                        token_versions=torch.zeros(n, length, dtype=torch.int64),
                        texts=[""] * n, group_index=[i // size for i in range(n)],
                        record_ids=[str(i // size) for i in range(n)], weight_version=0)


def test_bare_packed_logprobs_equal_memrl_packed_ones(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = _groups_batch(3, 4, vocab=model.config.vocab_size)
    layout = pack_completions(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                              batch.completion_mask)
    shape = tuple(batch.completion_ids.shape)
    with torch.no_grad():
        bare = learner.completion_logprobs_packed(model, layout, shape, temperature=0.7)
        memrl = packed_completion_logprobs(model, layout, shape, 0.7, "cpu")
    assert bare.shape == shape and bool((bare[batch.completion_mask == 1] < 0).all())
    torch.testing.assert_close(bare, memrl, atol=1e-5, rtol=0)


def test_bare_steps_lose_what_memrl_loses_on_the_same_batch(model_dir: Path):
    from transformers import AutoConfig

    if not dist.is_initialized():
        set_rank_env(0, 1, "127.0.0.1", free_port())
    # 3 micro-batches of 4 rows: group 1 is split across two. A first step's loss is -Σ A·tokens
    # / tokens whatever the log-probs (ratio 1, policy = reference); the second step's KL term
    # (β = 1) holds the first update and both models' log-probs (0.0327 here; 0.0291 at
    # temperature 0.71).
    settings = LearnerSettings(model_path=str(model_dir), max_steps=10, bf16=False, lr=1e-2,
                               warmup_ratio=0.0, micro_batch_size=7, temperature=0.7,
                               loss=LossSettings(beta=1.0))
    batch = _groups_batch(3, 4, vocab=AutoConfig.from_pretrained(model_dir).vocab_size)
    advantages = torch.randn(batch.num_completions, generator=torch.Generator().manual_seed(2))
    memrl = learner.TrainerStep(settings)
    losses = [memrl.step(batch, advantages) for _ in range(2)]
    assert losses[1] == pytest.approx(0.0327, abs=1e-4)
    for packed in (True, False):
        bare = learner.BareStep(settings, packed=packed)
        assert [bare.step(batch, advantages) for _ in range(2)] == pytest.approx(losses, abs=1e-5)
