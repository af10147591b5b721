"""An offline tiny causal LM: a byte-level BPE tokenizer trained on task text and a Llama model.

Used when no pretrained model can be downloaded. The tokenizer is byte-level, so any text
round-trips through ``decode(encode(text))``. Digit runs are pre-split from letters; by default
BPE then learns frequent numbers as single tokens (on small-number arithmetic a 1M-parameter
model reached a given accuracy in fewer CPU seconds this way than with one token per digit,
which keeps every number's spelling uniform at any size). The model is a
``LlamaForCausalLM`` or a ``Qwen2ForCausalLM`` and the folder is an ordinary Hugging Face
folder that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` load. A Qwen2 folder's
tokenizer reloads as ``Qwen2Tokenizer`` (transformers overrides the class for that model type):
the same vocabulary, merges and special-token ids behind Qwen2's own pre-tokenizer, which splits
every digit, so a Qwen2 base trains its tokenizer with ``split_digits`` and every loader
(warm start, learner, engines) sees the ids a real Qwen2.5 folder's class produces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
# Kept as ordinary (non-special) added tokens: one id each, so the format is cheap to emit, yet
# decode(..., skip_special_tokens=True) still writes them out for the reward parsers.
FORMAT_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# The model classes a tiny base can have (``model.tiny.architecture``).
TINY_CONFIGS: dict[str, Callable[..., PretrainedConfig]] = {"llama": LlamaConfig, "qwen2": Qwen2Config}


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    split_digits: bool = False,
    format_tags: Sequence[str] = FORMAT_TAGS,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with ChatML chat tokens on ``texts``.

    ``vocab_size`` counts every id: the 256 byte symbols, the chat special tokens
    (``<|endoftext|>`` = pad, ``<|im_start|>``, ``<|im_end|>`` = eos), ``format_tags`` and the
    learned merges. The result may be smaller when the texts do not yield enough merges.
    ``split_digits`` makes every digit its own token; otherwise digit runs (kept apart from
    letters and spaces) are merged like any other text. The tokenizer pads on the left (for
    batched generation) and renders chats in ChatML.
    """
    reserved = 256 + len(SPECIAL_TOKENS) + len(format_tags)
    if vocab_size < reserved:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the byte alphabet, chat tokens and format "
            f"tags alone take {reserved} ids"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=split_digits),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(format_tags),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in format_tags])
    # Options go to the constructor: set afterwards, padding_side is not saved.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
    split_digits: bool = False,
    architecture: str = "llama",
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts``, initialise a random model and save both.

    ``architecture`` is ``llama`` or ``qwen2`` (whose attention has q/k/v biases and whose
    tokenizer splits every digit whatever ``split_digits`` says: module docstring).
    The folder at ``out_dir`` (created if needed) holds ``config.json``,
    ``generation_config.json``, ``model.safetensors`` and the tokenizer files. Input and
    output embeddings are tied. Initial weights depend only on ``seed`` and the shapes; the
    global RNG is left untouched. ``split_digits`` is passed to ``train_bpe_tokenizer``. Returns
    ``out_dir`` as a ``Path``.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if architecture not in TINY_CONFIGS:
        raise ValueError(f"architecture {architecture!r}: choose one of {sorted(TINY_CONFIGS)}")
    out = Path(out_dir)
    tokenizer = train_bpe_tokenizer(
        texts, vocab_size, split_digits=split_digits or architecture == "qwen2",
        model_max_length=max_position_embeddings,
    )
    # transformers types a token id as int, str or a list of either; these are single tokens
    assert isinstance(tokenizer.eos_token_id, int) and isinstance(tokenizer.pad_token_id, int)
    config = TINY_CONFIGS[architecture](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

