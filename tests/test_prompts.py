"""Prompts: the system prompts, the 9 exemplars, k-shot message building and rendering."""

import random
import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from memrl.prompts import (
    COUNTDOWN_SYSTEM_PROMPT,
    GSM8K_EXEMPLARS,
    SYSTEM_PROMPT,
    build_messages,
    countdown_completion,
    render_prompt,
    xml_completion,
)
from memrl.rewards.countdown import is_countdown_format

# The spec's strict-format regex (no DOTALL): exemplars must satisfy it.
STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tokenizer(chat_template=TEMPLATE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["How many apples does Tom have now?"] * 4,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>",
                                   chat_template=chat_template)


def test_system_prompt_is_the_official_one():
    assert SYSTEM_PROMPT == (
        "\nRespond in the following format:\n\n<reasoning>\n...\n</reasoning>\n"
        "<answer>\n...\n</answer>\n"
    )
    assert "<think>" in COUNTDOWN_SYSTEM_PROMPT and "<answer>" in COUNTDOWN_SYSTEM_PROMPT


def test_nine_exemplars_in_the_strict_xml_format():
    assert len(GSM8K_EXEMPLARS) == 9
    assert len({q for q, _ in GSM8K_EXEMPLARS}) == 9
    for _, assistant in GSM8K_EXEMPLARS:
        assert STRICT_FORMAT.match(assistant)
    question, assistant = GSM8K_EXEMPLARS[1]
    assert question.startswith("If there are 3 cars")
    assert assistant == (
        "<reasoning>\nThere are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.\n</reasoning>\n"
        "<answer>\n5\n</answer>\n"
    )


def test_completion_formatters_match_their_rewards():
    assert STRICT_FORMAT.match(xml_completion("12 + 7 = 19.", "19"))
    assert is_countdown_format(countdown_completion("3 * 5 = 15, 15 + 7 = 22", "3 * 5 + 7"))


@pytest.mark.parametrize("shots", [0, 1, 3, 9])
def test_k_shot_messages(shots):
    messages = build_messages("Q?", system_prompt=SYSTEM_PROMPT, exemplars=GSM8K_EXEMPLARS,
                              num_shots=shots, rng=random.Random(0))
    assert len(messages) == 2 + 2 * shots
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert messages[-1] == {"role": "user", "content": "Q?"}
    turns = messages[1:-1]
    assert [m["role"] for m in turns] == ["user", "assistant"] * shots
    pairs = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]
    assert len(set(pairs)) == shots and set(pairs) <= set(GSM8K_EXEMPLARS)


def test_shots_are_drawn_by_the_rng():
    def shots(seed):
        messages = build_messages("Q?", system_prompt="", exemplars=GSM8K_EXEMPLARS, num_shots=2,
                                  rng=random.Random(seed))
        return [m["content"] for m in messages if m["role"] == "user"][:-1]

    assert shots(7) == shots(7)
    assert len({tuple(shots(seed)) for seed in range(10)}) > 5
    rng = random.Random(3)
    state = rng.getstate()
    messages = build_messages(
        "Q?", system_prompt="", exemplars=GSM8K_EXEMPLARS, num_shots=0, rng=rng
    )
    assert messages == [{"role": "user", "content": "Q?"}] and rng.getstate() == state


def test_too_many_shots_is_an_error():
    with pytest.raises(ValueError, match="num_shots = 10: must be between 0 and the 9"):
        build_messages("Q?", system_prompt="", exemplars=GSM8K_EXEMPLARS, num_shots=10,
                       rng=random.Random(0))
    with pytest.raises(ValueError, match="num_shots = 1: must be between 0 and the 0"):
        build_messages("Q?", system_prompt="", exemplars=(), num_shots=1, rng=random.Random(0))


def test_render_prompt_with_a_chat_template():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "How many?"}]
    assert render_prompt(_tokenizer(), messages) == "<|system|>S\n<|user|>How many?\n<|assistant|>"


def test_render_prompt_without_a_chat_template():
    with pytest.raises(ValueError, match="has no chat template"):
        render_prompt(_tokenizer(chat_template=None), [{"role": "user", "content": "Q"}])
