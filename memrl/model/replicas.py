"""Offline replicas of the paper's three policies: each one's real architecture, random weights.

Every paper config names Qwen2.5-0.5B-Instruct, Llama-3.2-1B-Instruct or Falcon3-1B-Instruct.
Their weights need the hub; their *architectures* do not. A replica is a Hugging Face folder
whose ``config.json`` carries the real model's architecture fields (model class, attention
biases, query and KV heads, head size, RoPE type, scaling and theta, tied or separate output
layer, vocabulary size, norm epsilon), random weights and the project's tiny BPE tokenizer
(:func:`memrl.model.tiny.train_bpe_tokenizer`). These are the fields that choose code paths:
how vLLM maps Hugging Face names onto its fused layers (Qwen2's q/k/v biases), grouped-query
attention with few KV heads, Llama 3's RoPE scaling, a head size of 256, an output layer that
is or is not the input embedding, vocabularies of 128-152k rows (the learner's log-softmax,
the weight buffer's size).

``full_size=False`` scales depth and width down (2 layers, hidden size 128, 2 query heads over
1 KV head) so that a test step takes seconds, and keeps everything else, the head size and the
real vocabulary size included; ``full_size=True`` is the real configuration (494M, 1.24B and
1.67B parameters), for the weight-sync benchmark and ``bench.gpu_smoke``.

The tokenizer has a few hundred ids; the matrices keep the real row count. As in a trained
model, whose spare rows are never sampled either (Qwen2.5's matrices have 151,936 rows for its
151,665 tokens), the ids past the tokenizer are made unsampleable: coordinate 0 of the
residual stream becomes a constant that every real token's input row sets and no layer writes,
every spare output row weighs it negatively and the final norm scales it, so a spare id's logit
sits 40 nats below any real one's (:func:`anchor_to_tokenizer`). The weights are otherwise
``from_config``'s random initialisation, with attention sharpened so that RoPE, biases and the
output layer show in the outputs (:func:`sharpen_attention`).

A Qwen2 folder's tokenizer is loaded as ``Qwen2Tokenizer`` whatever its ``tokenizer_config.json``
names (transformers lists ``qwen2`` among the model types whose hub tokenizer class it
overrides): the tiny vocabulary and merges behind Qwen2's own pre-tokenizer, which splits every
digit. That is the class a real Qwen2.5 folder gets; every memrl loader (learner, engines,
evaluation) goes through ``AutoTokenizer`` and so sees the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from memrl.model.tiny import train_bpe_tokenizer

# Coordinate 0 of the residual stream carries ANCHOR for every real token (module docstring);
# the final norm's gain on it is set so that real logits share an offset of at least
# TARGET_OFFSET nats and spare ones sit as far below zero: a gap of 2·TARGET_OFFSET.
ANCHOR = 0.1
TARGET_OFFSET = 20.0
# Std of the attention biases (Qwen2's q/k/v; zero after from_config's initialisation).
BIAS_STD = 0.1

# Depth and width of the test-size replicas; every other field stays the real model's.
TEST_SIZE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1}


@dataclass(frozen=True)
class Architecture:
    """One paper model's architecture: ``config`` holds its ``config.json`` fields (token ids
    excepted: the replica's come from its tokenizer), ``test_size`` what the test size changes,
    ``source`` where the fields were looked up."""

    name: str
    model_id: str
    source: str
    config: dict[str, Any]
    test_size: dict[str, Any] = field(default_factory=lambda: dict(TEST_SIZE))

    def hf_config(self, *, full_size: bool) -> PretrainedConfig:
        """The transformers config of the replica (without token ids), full or test size."""
        fields = dict(self.config)
        if not full_size:
            fields.update(self.test_size)
        return AutoConfig.for_model(**fields)


ARCHITECTURES: dict[str, Architecture] = {
    # Qwen2's attention puts biases on q/k/v (not o) by class, with no config field; its head
    # size is hidden_size / num_attention_heads (896 / 14 = 64; test size 128 / 2 = 64).
    "qwen2": Architecture(
        name="qwen2",
        model_id="Qwen/Qwen2.5-0.5B-Instruct",
        source=("config.json of Qwen/Qwen2.5-0.5B-Instruct (transformers_version 4.43.1), quoted "
                "whole in public code (e.g. the README of a fork that copied it, and a Rust "
                "loader's test fixture 'what Qwen2.5-0.5B-Instruct ships'); model card as "
                "mirrored in github.com/Abandon-ht/LLM-tutorial "
                "docs/source/model_pages/qwen2.5-0.5b-instruct.rst: 'RoPE, SwiGLU, RMSNorm, "
                "Attention QKV bias and tied word embeddings', 24 layers, 14 Q / 2 KV heads"),
        config={
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
            "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21,
            "tie_word_embeddings": True, "vocab_size": 151936, "attention_dropout": 0.0,
            "initializer_range": 0.02,
        },
    ),
    "llama3": Architecture(
        name="llama3",
        model_id="meta-llama/Llama-3.2-1B-Instruct",
        source=("config.json of meta-llama/Llama-3.2-1B-Instruct (commit 4e20de36), quoted in "
                "github.com/kevinstephano/thunder_model_blocks hf_llama/llama_config.py; the "
                "same fields in github.com/ansuehu/LLaMA-Omni Llama-3.2-1B-Instruct/config.json"),
        config={
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "attention_bias": False, "mlp_bias": False,
            "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "rms_norm_eps": 1e-05, "tie_word_embeddings": True, "vocab_size": 128256,
            "pretraining_tp": 1, "attention_dropout": 0.0, "initializer_range": 0.02,
        },
        test_size={**TEST_SIZE, "head_dim": 64},
    ),
    # Falcon3 is a Llama class with a head size of 256 and a separate output layer. At test
    # size the 2 heads x 256 exceed the hidden size of 128 (o_proj maps 512 back to 128): the
    # head size the attention kernels see stays the real one.
    "falcon3": Architecture(
        name="falcon3",
        model_id="tiiuae/Falcon3-1B-Instruct",
        source=("model card of tiiuae/Falcon3-1B-Instruct (as mirrored on huggingface.co/tiiuae/"
                "Falcon3-1B-Instruct-GPTQ-Int8): 18 decoder blocks, 8 query / 4 KV heads, head "
                "size 256, RoPE theta 1000042, 8K context, 131K vocabulary; every field as in "
                "huggingface.co/rahkaro/Moral_Instruct config.json, a fine-tune of "
                "tiiuae/Falcon3-1B-Base (LlamaForCausalLM, attention_bias false, "
                "rms_norm_eps 1e-06, rope_scaling null, tie_word_embeddings false, vocab 131072); "
                "the family's configs (Falcon3-3B-Instruct, Falcon3-7B-Instruct config.json) agree"),
        config={
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "attention_bias": False, "mlp_bias": False,
            "max_position_embeddings": 8192, "rope_theta": 1000042.0, "rope_scaling": None,
            "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "vocab_size": 131072,
            "pretraining_tp": 1, "attention_dropout": 0.0, "initializer_range": 0.02,
        },
        test_size={**TEST_SIZE, "head_dim": 256},
    ),
}

# Tokenizer text when the caller gives none: the answer format and small sums, as the tasks'.
DEFAULT_TEXTS = tuple(
    f"<reasoning>\n{a} plus {b} is {a + b}, {a + b} minus {b} is {a}\n</reasoning>\n"
    f"<answer>\n{a + b}\n</answer>"
    for a in range(12) for b in range(12)
)


def architecture(name: str) -> Architecture:
    """The architecture called ``name`` (``qwen2``, ``llama3`` or ``falcon3``)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}: choose one of {sorted(ARCHITECTURES)}") from None


def sharpen_attention(model: PreTrainedModel) -> None:
    """Attention that depends on its inputs, as a trained model's does.

    ``from_config``'s initialisation (std ``initializer_range``) gives query-key scores near 0
    everywhere: attention is uniform and the outputs would not show a wrong RoPE, bias or mask
    (dropping Llama 3's RoPE scaling moved log-probs by 5e-5, below the engines' 1e-4 tolerance;
    with this, by 4e-4 to 1e-3 on the tests' prompts). Query and key projections are scaled so
    that each score has a standard deviation of about 1, and the biases drawn with
    :data:`BIAS_STD`. Draws from the global RNG (the caller seeds it)."""
    config = model.config
    scale = 1.0 / (config.initializer_range * config.hidden_size**0.5)
    base: Any = model.base_model
    with torch.no_grad():
        for layer in base.layers:
            attention = layer.self_attn
            attention.q_proj.weight.mul_(scale)
            attention.k_proj.weight.mul_(scale)
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                if proj.bias is not None:
                    proj.bias.normal_(0.0, BIAS_STD)


def anchor_to_tokenizer(model: PreTrainedModel, used_ids: int, probe_ids: list[int]) -> None:
    """Make the ids from ``used_ids`` on unsampleable (module docstring).

    Coordinate 0 becomes a constant channel: +ANCHOR on it in every used input row, no layer
    writes to it (row 0 of each ``o_proj`` and ``down_proj`` is zero), +ANCHOR on it in every
    used output row and -ANCHOR in every spare one. The final norm's weight on it is then set
    from one forward over ``probe_ids``: large enough that at the probe's largest residual norm
    the shared offset of the real logits is TARGET_OFFSET nats."""
    base: Any = model.base_model
    layers: Any = (model.get_input_embeddings(), model.get_output_embeddings())
    embed, output = layers[0].weight, layers[1].weight
    captured: list[torch.Tensor] = []
    hook = base.norm.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    with torch.no_grad():
        embed[:used_ids, 0] = ANCHOR
        output[:used_ids, 0] = ANCHOR
        output[used_ids:, 0] = -ANCHOR
        for layer in base.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        try:
            model(input_ids=torch.tensor([probe_ids]), use_cache=False)
        finally:
            hook.remove()
        rms = captured[0].float().pow(2).mean(dim=-1).add(base.norm.variance_epsilon).sqrt().max()
        base.norm.weight[0] = TARGET_OFFSET * float(rms) / ANCHOR**2


def build_replica(
    arch: str,
    folder: str | Path,
    *,
    full_size: bool = False,
    dtype: str = "float32",
    texts: Iterable[str] | None = None,
    tokenizer_size: int = 512,
    seed: int = 0,
) -> Path:
    """Save a random-weight replica of ``arch`` (``qwen2``, ``llama3``, ``falcon3``) to ``folder``.

    The folder (created if needed) is an ordinary Hugging Face folder: ``config.json`` with the
    real architecture fields (test size unless ``full_size``), ``generation_config.json``,
    ``model.safetensors`` in ``dtype`` (``float32`` or ``bfloat16``) and a tiny BPE tokenizer of
    up to ``tokenizer_size`` ids trained on ``texts`` (default :data:`DEFAULT_TEXTS`). The
    weights depend only on ``seed`` and the shapes; the global RNG is left untouched.
    Returns ``folder`` as a ``Path``.
    """
    spec = architecture(arch)
    torch_dtype = getattr(torch, dtype, None)
    if torch_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype {dtype!r}: a replica is saved in 'float32' or 'bfloat16'")
    out = Path(folder)
    config = spec.hf_config(full_size=full_size)
    tokenizer = train_bpe_tokenizer(list(texts or DEFAULT_TEXTS), tokenizer_size,
                                    model_max_length=config.max_position_embeddings)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    # The ids every loader will see (a Qwen2 folder reloads as Qwen2Tokenizer: docstring).
    tokenizer = AutoTokenizer.from_pretrained(out)
    config.bos_token_id = None
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        sharpen_attention(model)
    probe = tokenizer.apply_chat_template([{"role": "user", "content": DEFAULT_TEXTS[-1]}],
                                          tokenize=False, add_generation_prompt=True)
    anchor_to_tokenizer(model, len(tokenizer), tokenizer(probe)["input_ids"])
    model = model.to(torch_dtype)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    return out
