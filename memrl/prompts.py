"""System prompts, the k-shot exemplars and chat-prompt rendering (see docs/method.md,
"Prompt and answer format").

The XML system prompt and the exemplars are those of the paper's official code, character for
character, because the format rewards score the model against exactly this layout. The nine
exemplars are the grade-school chain-of-thought exemplars of Wei et al. (2022), written in the
XML answer format.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

# The official code's prompt, leading newline and blank line included.
SYSTEM_PROMPT = """
Respond in the following format:

<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""

COUNTDOWN_SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process and then give "
    "the answer. Show your work in <think> </think> tags. Then write the final equation in "
    "<answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)


# How a direct demonstration's reasoning starts: "The answer is 19." (no working shown).
DIRECT_ANSWER_OPENING = "The answer is"


def xml_completion(reasoning: str, answer: str) -> str:
    """An assistant turn in the XML format the strict-format reward accepts."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def countdown_completion(thinking: str, equation: str) -> str:
    """An assistant turn in the Countdown format (``<think>`` then ``<answer>``)."""
    return f"<think>\n{thinking}\n</think>\n<answer>{equation}</answer>"


# (question, chain of thought, short answer)
_EXEMPLAR_PARTS: tuple[tuple[str, str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers "
        "plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. So the answer is 6.",
        "6",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in "
        "the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.",
        "5",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
        "have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had "
        "32 + 42 = 74. After eating 35, they had 74 - 35 = 39.",
        "39",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
        "many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave "
        "Denny 20 - 12 = 8.",
        "8",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How "
        "many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 "
        "more toys. 5 + 4 = 9.",
        "9",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each "
        "day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So "
        "5 * 4 = 20 computers were added. 9 + 20 is 29.",
        "29",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
        "more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls.",
        "33",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she "
        "has 23 - 15 dollars left. 23 - 15 is 8.",
        "8",
    ),
    (
        "What is the largest single-digit prime number?",
        "9 is divisble by 3 and 8 is divisible by 2, but 7 is prime.",
        "7",
    ),
)

# The fixed list of 9 k-shot exemplars: (question, assistant turn in the XML format).
GSM8K_EXEMPLARS: tuple[tuple[str, str], ...] = tuple(
    (question, xml_completion(reasoning, answer)) for question, reasoning, answer in _EXEMPLAR_PARTS
)


def build_messages(
    question: str,
    *,
    system_prompt: str,
    exemplars: Sequence[tuple[str, str]],
    num_shots: int,
    rng: random.Random,
) -> list[dict[str, str]]:
    """Chat messages: the system prompt (if non-empty), ``num_shots`` exemplars drawn at random
    without replacement by ``rng`` as user/assistant turns, then the question as the user turn.

    ``rng`` is only consumed when ``num_shots > 0``; the same rng state gives the same shots.
    """
    if num_shots < 0 or num_shots > len(exemplars):
        raise ValueError(
            f"num_shots = {num_shots}: must be between 0 and the {len(exemplars)} exemplars "
            "this task has"
        )
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if num_shots:
        for index in rng.sample(range(len(exemplars)), num_shots):
            shot_question, shot_answer = exemplars[index]
            messages.append({"role": "user", "content": shot_question})
            messages.append({"role": "assistant", "content": shot_answer})
    messages.append({"role": "user", "content": question})
    return messages


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The prompt text for ``messages`` with the tokenizer's chat template, ending with the
    assistant's generation prompt. Raises ValueError if the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template: prompts are rendered with "
            "tokenizer.apply_chat_template. Use an instruct/chat model's tokenizer, or set "
            "tokenizer.chat_template to a Jinja template before training."
        )
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def record_prompt(task: Any, tokenizer: Any, record: Any, *, num_shots: int, seed: int) -> str:
    """The chat prompt of a task ``record``, built the same way for training and evaluation:
    the ``num_shots`` exemplars are drawn with an rng seeded by (``seed``, record id), so every
    run (and a resumed one) gives each question the same shots."""
    messages = build_messages(
        record.question,
        system_prompt=task.system_prompt,
        exemplars=task.exemplars,
        num_shots=num_shots,
        rng=random.Random(f"{seed}:{record.id}"),
    )
    return render_prompt(tokenizer, messages)
