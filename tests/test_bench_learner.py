"""The pure parts of the learner benchmark (bench/learner.py): token counts of the padded and
packed layouts, the padding share, and the figures' ratios."""

import pytest
import torch

from bench import learner
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
    assert counts == {"real": 13, "padded": 18, "packed": 12, "packed_real": 11}
    assert learner.pad_share(counts, packed=False) == pytest.approx(5 / 18)
    assert learner.pad_share(counts, packed=True) == pytest.approx(1 / 12)
    # one row per micro-batch: nothing shared, each row packed alone (6 + 3 + 6 positions)
    assert learner.token_counts(batch, micro_batch_size=1)["packed"] == 4 + 3 + 6


def test_learner_figures_ratios_against_bare_padded():
    seconds = {"bare padded": [2.0, 1.0, 3.0], "memrl": [1.0, 0.5, 1.5]}
    figures = learner.learner_figures(seconds, real_tokens=1000)
    assert figures["bare padded"]["seconds"]["median"] == 2.0
    assert figures["memrl"]["vs_bare"] == pytest.approx(0.5)
    assert figures["memrl"]["tokens_per_s"] == pytest.approx(1000.0)
    with pytest.raises(KeyError):
        learner.learner_figures({"memrl": [1.0]}, real_tokens=10)
