"""Generation with transformers ``model.generate``: CPU or one GPU, batched with left padding.

Behaviour log-probs come from a pass-through logits processor placed before the sampling
warpers. It sees the raw logits of every step and keeps only the latest step's
``log_softmax(logits / T)``; when the next step starts it reads the token just sampled and
records that token's log-prob. Memory stays ``O(N x V)``, whereas ``output_logits=True`` keeps
every step's logits (``L x N x V`` floats: 31 GB for 256 completions of 200 tokens over a
152k vocabulary). The processor sees the logits before temperature and top-p, which is what
``transformers`` returns as ``output_logits`` (``output_scores`` are after the warpers: scaled
by ``1/T`` and ``-inf`` outside the top-p set). With ``top_p < 1`` the reported numbers are
therefore the untruncated ``log_softmax(logits / T)``, matching the learner's recomputation
rather than the truncated distribution the tokens were drawn from.

The checkpoint's ``generation_config.json`` sampling defaults (repetition penalty, top-k, ...)
are dropped on load so that the distribution sampled from is exactly ``softmax(logits / T)``
restricted by ``top_p``; only its EOS ids are kept.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
)

from memrl.model.precision import auto_dtype
from memrl.rollout.engine import (
    GenerationEngine,
    SamplingSettings,
    build_rollout_batch,
    check_request,
    checkpoint_eos_ids,
    load_tokenizer,
)
from memrl.types import RolloutBatch
from memrl.weights import PackedWeights, unpack


class _SampledTokenLogprobs(LogitsProcessor):
    """Pass-through processor recording ``log_softmax(logits / T)`` of each sampled token."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.per_step: list[torch.Tensor] = []  # [N] float32 per completed step
        self._latest: torch.Tensor | None = None  # [N, V] log-probs of the step being sampled

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._latest is not None:
            # input_ids now ends with the token sampled from self._latest.
            self.per_step.append(self._latest.gather(1, input_ids[:, -1:]).squeeze(1))
        self._latest = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """[N, L] log-probs of ``completion_ids`` (the tokens ``generate`` returned)."""
        length = completion_ids.shape[1]
        if len(self.per_step) < length and self._latest is not None:
            step = len(self.per_step)
            last_token = completion_ids[:, step : step + 1]
            self.per_step.append(self._latest.gather(1, last_token).squeeze(1))
        if len(self.per_step) < length:
            raise RuntimeError(
                f"recorded {len(self.per_step)} sampling steps for {length} generated tokens"
            )
        # generate() may run steps it later undoes (deferred stop checks): keep the first L.
        return torch.stack(self.per_step[:length], dim=1)


class HFEngine(GenerationEngine):
    """transformers-based engine (the CPU default; also runs on one GPU).

    Args:
        model_path: Hugging Face model folder (config, weights, tokenizer).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default CUDA when visible, else CPU.
        dtype: torch dtype name for the weights, or ``"auto"``: on CPU the learner's
            (``memrl.model.precision.auto_dtype``), on CUDA the checkpoint's dtype.
        seed: seeds the engine's own stream of per-call seeds, used by requests without
            ``SamplingSettings.seed``; the process-wide torch RNG is left untouched.
        num_threads: torch intra-op threads for this process (``None`` leaves it unchanged).
        add_special_tokens: let the tokenizer add BOS/EOS to prompts (off: prompts are final).
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        num_threads: int | None = 1,
        add_special_tokens: bool = False,
    ) -> None:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._add_special_tokens = add_special_tokens
        self._tokenizer = load_tokenizer(model_path)
        if dtype == "auto" and self._device.type == "cpu":
            dtype = auto_dtype(on_cpu=True)  # the learner's, so behaviour log-probs match it
        torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype, None)
        if not (torch_dtype == "auto" or isinstance(torch_dtype, torch.dtype)):
            raise ValueError(f"HFEngine dtype {dtype!r} is not 'auto' or a torch dtype name")
        self._model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
        # transformers wraps PreTrainedModel.to in functools.wraps, which typeshed types unbound
        self._model.to(self._device).eval()  # pyright: ignore[reportArgumentType]
        self._eos_ids = checkpoint_eos_ids(model_path, self._tokenizer)
        self._pad_id = int(self._tokenizer.pad_token_id)
        self._model.generation_config = GenerationConfig(
            eos_token_id=self._eos_ids, pad_token_id=self._pad_id
        )
        self._weight_version = 0
        self._call_seeds = random.Random(seed)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def weight_version(self) -> int:
        return self._weight_version

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def model(self) -> torch.nn.Module:
        """The underlying ``PreTrainedModel`` (for tests and diagnostics)."""
        return self._model

    def load_weights(self, packed: PackedWeights) -> None:
        """Copy the packed tensors into the model.

        Names must match the model's state dict. A name may be left out only when its tensor
        shares memory with one that is present (a tied ``lm_head.weight``, which
        ``named_parameters()`` lists once).
        """
        tensors = unpack(packed)
        result = self._model.load_state_dict(tensors, strict=False)
        state = self._model.state_dict()
        loaded_storage = {state[name].data_ptr() for name in tensors if name in state}
        missing = [
            name for name in result.missing_keys if state[name].data_ptr() not in loaded_storage
        ]
        problems = []
        if missing:
            problems.append(f"missing {sorted(missing)[:5]}")
        if result.unexpected_keys:
            problems.append(f"unexpected {sorted(result.unexpected_keys)[:5]}")
        if problems:
            raise ValueError(
                f"weights version {packed.version} do not fit the model: " + "; ".join(problems)
            )
        self._weight_version = int(packed.version)

    def _generation_config(self, settings: SamplingSettings, greedy: bool) -> GenerationConfig:
        sampling: dict[str, Any]
        if greedy:
            sampling = {"do_sample": False}
        else:
            # top_k=0 disables transformers' global default of top-k 50.
            sampling = {
                "do_sample": True,
                "temperature": settings.temperature,
                "top_p": settings.top_p,
                "top_k": 0,
            }
        return GenerationConfig(
            **sampling,
            max_new_tokens=settings.max_tokens,
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
            return_dict_in_generate=True,
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
        encoded = self._tokenizer(
            list(prompts),
            padding=True,
            add_special_tokens=self._add_special_tokens,
            return_tensors="pt",
        )
        group = settings.num_generations
        # Greedy copies of one prompt are identical: decode once, replicate afterwards.
        copies = 1 if greedy else group
        input_ids = encoded["input_ids"].repeat_interleave(copies, dim=0).to(self._device)
        attention_mask = encoded["attention_mask"].repeat_interleave(copies, dim=0).to(self._device)
        recorder = _SampledTokenLogprobs(1.0 if greedy else settings.temperature)
        call_seed = self._call_seeds.getrandbits(63) if settings.seed is None else settings.seed
        rng_devices = [self._device.index or 0] if self._device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(call_seed)
            # transformers types generate's self as a protocol its own models do not satisfy
            output = self._model.generate(  # pyright: ignore[reportAttributeAccessIssue]
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=self._generation_config(settings, greedy),
                logits_processor=LogitsProcessorList([recorder]),
            )
        completion_ids = output.sequences[:, input_ids.shape[1] :]
        logprobs = recorder.finish(completion_ids)
        if greedy:
            rows = torch.arange(len(prompts), device=completion_ids.device).repeat_interleave(group)
            completion_ids, logprobs = completion_ids[rows], logprobs[rows]
        prompt_rows = torch.arange(len(prompts)).repeat_interleave(group)
        return build_rollout_batch(
            prompt_ids=encoded["input_ids"][prompt_rows],
            prompt_mask=encoded["attention_mask"][prompt_rows],
            completion_ids=completion_ids.cpu(),
            generated=torch.ones_like(completion_ids, dtype=torch.int64).cpu(),
            behaviour_logprobs=logprobs.cpu(),
            eos_ids=self._eos_ids,
            pad_id=self._pad_id,
            weight_version=self._weight_version,
            tokenizer=self._tokenizer,
            record_ids=record_ids,
            num_generations=group,
        )
