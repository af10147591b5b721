"""Generation with vLLM (v1 engine) on one GPU, with in-place weight updates.

vLLM is imported lazily (it is an optional ``gpu`` extra and cannot run on CPU). The engine core
runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``collective_rpc`` hands the
packed weights to the GPU worker by reference instead of serialising them; the worker copies
each dtype's buffer to the GPU once and calls the model's own ``load_weights`` (which maps
Hugging Face names onto vLLM's fused layers and skips a tied ``lm_head``). The prefix cache
is reset after every load: cached KV blocks were computed with the old weights.

Behaviour log-probs use ``logprobs_mode="processed_logprobs"`` (vLLM >= 0.10.2): the
log-softmax of the logits after temperature and after top-k/top-p, gathered at the sampled
token. With ``top_p == 1`` (the default) that is exactly ``log_softmax(logits / T)``, the
convention of ``memrl.rollout.engine``. With ``top_p < 1`` vLLM reports the truncated,
renormalised distribution (what the token was really drawn from), which is larger than the
learner's untruncated recomputation; the HF engine reports the untruncated value instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from memrl.rollout.engine import (
    GenerationEngine,
    SamplingSettings,
    build_rollout_batch,
    check_request,
    checkpoint_eos_ids,
    load_tokenizer,
    pad_rows,
)
from memrl.types import RolloutBatch
from memrl.weights import PackedWeights, unpack

logger = logging.getLogger(__name__)


class PackedWeightsWorkerExtension:
    """Methods mixed into vLLM's GPU worker (passed as ``worker_extension_cls``).

    ``self`` is the vLLM worker: ``self.device`` is its GPU and ``self.model_runner.model``
    the loaded model.
    """

    def memrl_load_packed_weights(self, packed: PackedWeights) -> int:
        """Load ``packed`` into the model in place; returns how many tensors were offered."""
        worker: Any = self
        tensors = unpack(packed, device=worker.device)
        worker.model_runner.model.load_weights(weights=list(tensors.items()))
        return len(tensors)


class VLLMEngine(GenerationEngine):
    """vLLM-based engine for one GPU.

    Args:
        model_path: Hugging Face model folder.
        dtype: vLLM dtype (``"auto"``, ``"bfloat16"``, ``"float16"``, ``"float32"``).
        seed: engine seed (requests without ``SamplingSettings.seed`` draw from it).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (weights + KV cache).
        max_model_len: longest prompt + completion; ``None`` uses the model's limit.
        enable_prefix_caching: share KV blocks of a prompt across its group.
        enforce_eager: skip CUDA-graph capture (faster start, slower decoding).
        add_special_tokens: let the tokenizer add BOS/EOS to prompts (off: prompts are final).
        llm_kwargs: further keyword arguments for ``vllm.LLM``.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        add_special_tokens: bool = False,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        # Must be set before the engine starts: keeps the engine core in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self._tokenizer = load_tokenizer(model_path)
        self._pad_id = int(self._tokenizer.pad_token_id)
        self._add_special_tokens = add_special_tokens
        try:
            self._llm = LLM(
                model=model_path,
                dtype=dtype,
                seed=seed,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                enable_prefix_caching=enable_prefix_caching,
                enforce_eager=enforce_eager,
                logprobs_mode="processed_logprobs",
                worker_extension_cls=f"{__name__}.PackedWeightsWorkerExtension",
                **(llm_kwargs or {}),
            )
        except TypeError as error:
            raise RuntimeError(
                f"vLLM rejected the engine arguments ({error}); memrl needs vLLM >= 0.10.2 "
                "for logprobs_mode and worker_extension_cls"
            ) from error
        self._eos_ids = checkpoint_eos_ids(model_path, self._tokenizer)
        self._weight_version = 0
        self._warned_top_p = False

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def weight_version(self) -> int:
        return self._weight_version

    def load_weights(self, packed: PackedWeights) -> None:
        self._llm.collective_rpc("memrl_load_packed_weights", args=(packed,))
        self._llm.reset_prefix_cache()
        self._weight_version = int(packed.version)

    def _sampling_params(self, settings: SamplingSettings, greedy: bool, prompt_index: int) -> Any:
        from vllm import SamplingParams

        group = 1 if greedy else settings.num_generations
        # vLLM seeds child j of a request with seed + j: space prompts G apart so no two
        # completions share a seed.
        seed = settings.seed
        if seed is not None:
            seed += prompt_index * settings.num_generations
        return SamplingParams(
            n=group,
            temperature=0.0 if greedy else settings.temperature,
            top_p=1.0 if greedy else settings.top_p,
            max_tokens=settings.max_tokens,
            logprobs=0,
            seed=seed,
            stop_token_ids=self._eos_ids,
            # Texts are decoded once, by build_rollout_batch, from the masked token ids.
            detokenize=False,
        )

    def generate(
        self,
        prompts: list[str],
        record_ids: list[str],
        settings: SamplingSettings,
        *,
        greedy: bool = False,
    ) -> RolloutBatch:
        check_request(prompts, record_ids)
        if settings.top_p < 1 and not greedy and not self._warned_top_p:
            logger.warning(
                "top_p=%s < 1: vLLM behaviour log-probs describe the truncated distribution, "
                "not the learner's log_softmax(logits / T)",
                settings.top_p,
            )
            self._warned_top_p = True
        prompt_token_ids = [
            self._tokenizer(prompt, add_special_tokens=self._add_special_tokens)["input_ids"]
            for prompt in prompts
        ]
        outputs = self._llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_token_ids],
            [self._sampling_params(settings, greedy, i) for i in range(len(prompts))],
            use_tqdm=False,
        )
        group = settings.num_generations
        prompt_rows: list[list[int]] = []
        completion_rows: list[list[int]] = []
        logprob_rows: list[list[float]] = []
        for ids, output in zip(prompt_token_ids, outputs):
            completions = sorted(output.outputs, key=lambda completion: completion.index)
            if greedy:
                completions = completions * group
            for completion in completions:
                tokens = list(completion.token_ids)
                steps = completion.logprobs or []
                if len(steps) != len(tokens):
                    raise RuntimeError(
                        f"vLLM returned {len(steps)} log-prob entries for {len(tokens)} tokens"
                    )
                prompt_rows.append(ids)
                completion_rows.append(tokens)
                logprob_rows.append([step[token].logprob for step, token in zip(steps, tokens)])
        pad, long = self._pad_id, torch.int64
        prompt_ids, prompt_mask = pad_rows(prompt_rows, pad, side="left", dtype=long)
        completion_ids, generated = pad_rows(completion_rows, pad, side="right", dtype=long)
        logprobs, _ = pad_rows(logprob_rows, 0.0, side="right", dtype=torch.float32)
        return build_rollout_batch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=completion_ids,
            generated=generated,
            behaviour_logprobs=logprobs,
            eos_ids=self._eos_ids,
            pad_id=self._pad_id,
            weight_version=self._weight_version,
            tokenizer=self._tokenizer,
            record_ids=record_ids,
            num_generations=group,
        )
