"""Every key a run logs to ``metrics.jsonl`` (and TensorBoard, W&B), with its meaning and unit.

Each key is declared once below, as a constant with its description; a key whose middle part
varies (``reward/{component}/mean``) is a pattern whose ``{...}`` part stands for one path
segment (no ``/``). :func:`describe` finds a logged key's entry; :func:`unknown_keys` lists the
logged keys this catalogue lacks (a test holds a real run's ``metrics.jsonl`` to it), and
``docs/run-directory.md`` is generated from :data:`CATALOGUE` (:mod:`memrl.run_dir_docs`).

Several families come from other components' dicts under a prefix: ``train/`` the learner
group's merged step statistics (:mod:`memrl.learner.stats`), ``memory/`` the memory service's
``metrics()``, ``eval/`` the fields of the run's greedy evaluation. Their keys are listed here
all the same, so that a new statistic needs a description before a run may log it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricKey:
    """One logged key (or pattern), what it means and its unit (empty: a plain number)."""

    name: str
    meaning: str
    unit: str = ""

    @property
    def group(self) -> str:
        """The part before the first ``/`` (empty for a top-level key such as ``accuracy``)."""
        return self.name.split("/", 1)[0] if "/" in self.name else ""

    @property
    def is_pattern(self) -> bool:
        return "{" in self.name


_DECLARED: list[MetricKey] = []


def _key(name: str, meaning: str, unit: str = "") -> str:
    _DECLARED.append(MetricKey(name, meaning, unit))
    return name


_S, _FRACTION, _COUNT, _TOKENS = "s", "fraction", "count", "tokens"  # units

# What each group of keys is; the reference lists the groups in this order.
GROUPS: dict[str, str] = {
    "": "On every line (`step`) and on each training step's line (`accuracy`).",
    "reward": "The rewards of the step's completions: mean and standard deviation over them.",
    "completion": "The step's completions.",
    "grpo": "The group-relative advantages.",
    "train": "The learners' optimizer step: their statistics merged over micro-batches and "
             "ranks (token means weighted by each rank's tokens; durations of the slowest rank).",
    "time": "Seconds per phase of the step, as the driver waited for it.",
    "throughput": "Tokens per second.",
    "weights": "The policy's weights and their trip to the rollout workers.",
    "data": "The prompt stream.",
    "rollout": "The rollout workers, and preemption ([spot.md](spot.md)); counters are totals "
               "since the run (or its resume) started.",
    "health": "Failures survived.",
    "memory": "The episodic-memory service, with a method that uses it (`memoryr*`, `explore`): "
              "sizes over all shards, hit rates and means of the step's lookups.",
    "mechanism": "How the intrinsic terms (`memory_exploit`, `memory_explore`, `random_bonus`; "
                 "unweighted, as in `reward/{component}/mean`) split over the step's completions: "
                 "correct vs incorrect ones, worked vs direct answers (a direct answer's reasoning "
                 "starts with 'The answer is', `memrl.tasks.base.is_direct_answer`). A key is "
                 "left out of a step with no completion of its kind; `mechanism/worked_frac` is "
                 "logged by every method.",
    "eval": "The run's greedy evaluation on the held-out set, on lines of their own: at step 0 "
            "(`trainer.eval_before_after`), every `trainer.eval_every_steps` and after the last "
            "step.",
}

# -- every line, and the step's accuracy ---------------------------------------------------------
STEP = _key("step", "the training step the line belongs to (0: before the first step)")
ACCURACY = _key("accuracy", "share of the step's completions that the correctness reward "
                "graded correct", _FRACTION)

# -- rewards -------------------------------------------------------------------------------------
REWARD_TOTAL_MEAN = _key("reward/total/mean", "the total reward GRPO optimises: the weighted "
                         "sum of the components ([rewards.md](rewards.md))")
REWARD_TOTAL_STD = _key("reward/total/std", "its standard deviation over the step's completions")
REWARD_MEAN = _key("reward/{component}/mean", "one component before its weight: a rule reward, "
                   "named by its `fn` (the config's `rewards[].fn`, else the task's), or an "
                   "intrinsic term (`memory_exploit`, `memory_explore`, `random_bonus`)")
REWARD_STD = _key("reward/{component}/std", "its standard deviation over the step's completions")
REWARD_INTRINSIC_MEAN = _key(
    "reward/intrinsic/mean", "the intrinsic part of the total reward per completion, weights "
    "included: λ_s·R̂_exploit + λ_e·R̂_explore, or the random bonus of `r1+random` (which "
    "`random_bonus.match_run` matches step by step); only with such a term")
REWARD_INTRINSIC_STD = _key("reward/intrinsic/std", "its standard deviation over the step's "
                            "completions")

# -- completions and advantages ------------------------------------------------------------------
COMPLETION_LENGTH_MEAN = _key("completion/length/mean", "completion length", _TOKENS)
COMPLETION_LENGTH_STD = _key("completion/length/std", "its standard deviation", _TOKENS)
COMPLETION_CLIPPED_FRAC = _key("completion/clipped_frac", "share of completions that reached "
                               "`grpo.max_completion_length`", _FRACTION)
GRPO_ZERO_VARIANCE_GROUPS_FRAC = _key(
    "grpo/zero_variance_groups_frac", "share of prompt groups whose rewards were all equal (no "
    "learning signal; dropped with `grpo.filter_zero_variance`)", _FRACTION)

# -- the learners' step (memrl.learner.policy.PolicyTrainer.optimizer_step, actors/learner.py) ---
TRAIN_LOSS = _key("train/loss", "the GRPO loss of the step (the ranks' shares summed)")
TRAIN_KL = _key("train/kl", "mean k3 KL estimate to the reference model per completion token "
                "(0 without one: `grpo.beta` 0)")
TRAIN_CLIP_FRAC = _key("train/clip_frac", "share of completion tokens where the clipped branch "
                       "of the surrogate binds", _FRACTION)
TRAIN_RATIO_MEAN = _key("train/ratio_mean", "mean policy ratio π_θ / π_old per completion token")
TRAIN_IS_WEIGHT_MEAN = _key("train/is_weight_mean", "mean importance weight per completion "
                            "token (capped at `rollout.is_cap`); only on steps that trained on "
                            "tokens sampled by older weights (async mode)")
TRAIN_STALE_TOKEN_FRAC = _key("train/stale_token_frac", "share of completion tokens sampled by "
                              "weights older than the trained ones (async mode)", _FRACTION)
TRAIN_BEHAVIOUR_LOGPROB_GAP = _key(
    "train/behaviour_logprob_gap", "mean |learner − sampler| log-prob per completion token: the "
    "train/inference mismatch")
TRAIN_GRAD_NORM = _key("train/grad_norm", "global gradient norm before clipping")
TRAIN_LR = _key("train/lr", "learning rate of the step")
TRAIN_STEP = _key("train/step", "optimizer steps taken so far", _COUNT)
TRAIN_TOKENS = _key("train/tokens", "real completion tokens trained on (all ranks)", _TOKENS)
TRAIN_SEQUENCE_TOKENS = _key("train/sequence_tokens", "real prompt + completion tokens trained "
                             "on, without padding (all ranks)", _TOKENS)
TRAIN_SEQUENCES = _key("train/sequences", "completions trained on (all ranks)", _COUNT)
TRAIN_REFERENCE_SECONDS = _key("train/reference_seconds", "the reference model's log-prob pass, "
                               "run while the driver scores (slowest rank)", _S)
TRAIN_REF_LOGPROB_S = _key("train/ref_logprob_s", "a reference pass inside the update call "
                           "(about 0: the trainer runs it beforehand, `train/reference_seconds`)", _S)
TRAIN_UPDATE_S = _key("train/update_s", "forward, backward and optimizer step (slowest rank)", _S)
TRAIN_STEP_TIME_S = _key("train/step_time_s", "the whole update call (slowest rank)", _S)

# -- phases --------------------------------------------------------------------------------------
TIME_GENERATE = _key("time/generate", "waiting for the step's generation (async: most of it ran "
                     "during the previous step)", _S)
TIME_SCORE = _key("time/score", "scoring: rule rewards and the memory service; the learners' "
                  "reference pass runs meanwhile", _S)
TIME_MEMORY = _key("time/memory", "the memory service's share of `time/score`", _S)
TIME_REFERENCE = _key("time/reference", "the learners' reference pass (= `train/reference_"
                      "seconds`; overlaps `time/score`)", _S)
TIME_TRAIN = _key("time/train", "waiting for the learners after scoring: the rest of their "
                  "reference pass, then the optimizer step", _S)
TIME_SYNC = _key("time/sync", "publishing the new weights, plus the slowest rollout worker's "
                 "load of the weights it generated with", _S)
TIME_STEP = _key("time/step", "the whole step, from waiting for generation to the publish", _S)

# -- throughput ----------------------------------------------------------------------------------
THROUGHPUT_TOKENS_PER_S = _key("throughput/tokens_per_s", "generated tokens per second of "
                               "`time/step`", "tokens/s")
THROUGHPUT_GENERATE_TOKENS_PER_S = _key(
    "throughput/generate_tokens_per_s", "the step's generated tokens ÷ the mean generation "
    "seconds of its rollout requests (they run in parallel, one per worker)", "tokens/s")
THROUGHPUT_TRAIN_TOKENS_PER_S = _key(
    "throughput/train_tokens_per_s", "`train/sequence_tokens` per second of the learners' "
    "compute (reference pass + update; [performance.md](performance.md))", "tokens/s")

# -- weights -------------------------------------------------------------------------------------
WEIGHTS_VERSION = _key("weights/version", "the policy version after the step (one per step)")
WEIGHTS_STALENESS = _key("weights/staleness", "versions the step's oldest sampling weights lagged "
                         "behind the trained ones (≤ `rollout.max_staleness`)")
WEIGHTS_PUBLISH_SECONDS = _key("weights/publish_seconds", "packing the new weights on learner "
                               "rank 0 for the rollout workers", _S)

# -- data ----------------------------------------------------------------------------------------
DATA_CONSUMED_PROMPTS = _key("data/consumed_prompts", "prompts taken from the stream so far",
                             _COUNT)
DATA_PROMPTS_SHA1 = _key("data/prompts_sha1", "a fingerprint of the step's prompts (SHA-1 of "
                         "their ids, 16 hex digits): the same prompts give the same value in any run")

# -- rollout workers and preemption (actors/rollout_pool.py PoolEvents) --------------------------
ROLLOUT_NUM_WORKERS = _key("rollout/num_workers", "rollout workers running (placed and "
                           "answering)", _COUNT)
ROLLOUT_NUM_WORKERS_REQUESTED = _key(
    "rollout/num_workers_requested", "rollout workers asked for (`rollout.num_workers`, "
    "`control.yaml` or `memrl scale`; for `auto`, what the nodes hold)", _COUNT)
ROLLOUT_FAILURES = _key("rollout/failures", "generation requests that failed", _COUNT)
ROLLOUT_REDISPATCHED = _key("rollout/redispatched", "failed requests sent again to another "
                            "worker", _COUNT)
ROLLOUT_DRAINING_NODES = _key("rollout/draining_nodes", "nodes draining now", _COUNT)
ROLLOUT_DRAINING_NODES_SEEN = _key("rollout/draining_nodes_seen", "nodes seen draining "
                                   "(preemption notices)", _COUNT)
ROLLOUT_PREEMPTED_WORKERS = _key("rollout/preempted_workers", "workers lost to a node that went "
                                 "or began draining", _COUNT)
ROLLOUT_RESENT_GROUPS = _key("rollout/resent_groups", "prompt groups sent again after a failure "
                             "or ahead of a drain deadline", _COUNT)
ROLLOUT_LOST_WORK_S = _key("rollout/lost_work_s", "generation seconds of failed or abandoned "
                           "requests", _S)

# -- health --------------------------------------------------------------------------------------
HEALTH_MEMORY_RESTARTS = _key("health/memory_restarts", "scoring calls retried because the "
                              "memory service died during them", _COUNT)

# -- the memory service (actors/memory.py MemoryActor.metrics, memrl/memory/rewarder.py) ---------
MEMORY_SUCCESS_KEYS = _key("memory/success_keys", "questions in the success memory", _COUNT)
MEMORY_SUCCESS_VALUES = _key("memory/success_values", "reasonings stored in the success memory",
                             _COUNT)
MEMORY_FAILURE_KEYS = _key("memory/failure_keys", "questions in the failure memory "
                           "(with the explore reward, `memoryr+*`, `explore`)", _COUNT)
MEMORY_FAILURE_VALUES = _key("memory/failure_values", "reasonings stored in the failure memory "
                             "(`memoryr+*`, `explore`)", _COUNT)
MEMORY_EXPLOIT_HIT_RATE = _key("memory/exploit_hit_rate", "share of the step's completions whose "
                               "success-memory lookup found neighbours", _FRACTION)
MEMORY_EXPLORE_HIT_RATE = _key("memory/explore_hit_rate", "share of the step's completions whose "
                               "failure-memory lookup found neighbours", _FRACTION)
MEMORY_EXPLOIT_MEAN = _key("memory/exploit_mean", "mean normalised exploit reward of the step")
MEMORY_EXPLORE_MEAN = _key("memory/explore_mean", "mean normalised explore reward of the step")
MEMORY_EXPLOIT_DISTANCE_MEAN = _key("memory/exploit_distance_mean", "mean raw exploit distance "
                                    "over the lookups that found neighbours (0: none did)")
MEMORY_EXPLORE_NOVELTY_MEAN = _key("memory/explore_novelty_mean", "mean raw explore novelty over "
                                   "the lookups that found neighbours (0: none did)")
MEMORY_STEPS_DONE = _key("memory/steps_done", "steps the memory has scored (restored from its "
                         "snapshot after a restart)", _COUNT)
MEMORY_TEXTS_ENCODED = _key("memory/texts_encoded", "texts the embedder encoded since the service "
                            "started", _COUNT)
MEMORY_QUESTION_CACHE_HITS = _key("memory/question_cache_hits", "question embeddings served from "
                                  "the encoder's cache since the service started", _COUNT)
MEMORY_LATENCY_P50_MS = _key("memory/latency_p50_ms", "median request latency (last 1000 "
                             "requests)", "ms")
MEMORY_LATENCY_P99_MS = _key("memory/latency_p99_ms", "99th-percentile request latency (last "
                             "1000 requests)", "ms")
MEMORY_REQUESTS = _key("memory/requests", "requests served since the service started", _COUNT)
MEMORY_RESTARTED = _key("memory/restarted", "1 when the running service is a restart (Ray "
                        "re-created it after a failure), else 0")
MEMORY_NUM_SHARDS = _key("memory/num_shards", "shards the memory is split into "
                         "(`memory.num_shards`)", _COUNT)

# -- the mechanism: intrinsic terms by outcome and by answer style (memrl.train.step_metrics) ---
MECHANISM_CORRECT = _key("mechanism/{component}/correct", "mean of the intrinsic term over the "
                         "step's correct completions")
MECHANISM_INCORRECT = _key("mechanism/{component}/incorrect", "its mean over the incorrect ones")
MECHANISM_WORKED = _key("mechanism/{component}/worked", "its mean over the worked answers "
                        "(reasoning shown)")
MECHANISM_DIRECT = _key("mechanism/{component}/direct", "its mean over the direct answers "
                        "('The answer is N.')")
MECHANISM_WORKED_FRAC = _key("mechanism/worked_frac", "share of the step's completions that are "
                             "worked answers", _FRACTION)

# -- evaluation (memrl.train.evaluate.GreedyEvalResult) ------------------------------------------
EVAL_ACCURACY = _key("eval/accuracy", "share of held-out problems the correctness reward graded "
                     "correct (one greedy completion each)", _FRACTION)
EVAL_ACCURACY_LENIENT = _key("eval/accuracy_lenient", "the same completions graded by the task's "
                             "benchmark grader (`memrl eval`'s): the final answer however it is "
                             "written", _FRACTION)
EVAL_NUM_CORRECT = _key("eval/num_correct", "held-out problems graded correct", _COUNT)
EVAL_NUM_TOTAL = _key("eval/num_total", "held-out problems (`task.eval_size`)", _COUNT)
EVAL_MEAN_LENGTH = _key("eval/mean_length", "mean completion length", _TOKENS)
EVAL_ANSWER_TAG_RATE = _key("eval/answer_tag_rate", "share of the completions that open an "
                            "`<answer>` tag (the format the system prompt asks for)", _FRACTION)

CATALOGUE: tuple[MetricKey, ...] = tuple(_DECLARED)

_EXACT = {entry.name: entry for entry in CATALOGUE if not entry.is_pattern}
_PATTERNS = [(re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(entry.name)) + "$"), entry)
             for entry in CATALOGUE if entry.is_pattern]


def describe(key: str) -> MetricKey | None:
    """The catalogue's entry for a logged ``key`` (an exact name first, then a pattern), or None
    when the catalogue lacks it."""
    if key in _EXACT:
        return _EXACT[key]
    return next((entry for pattern, entry in _PATTERNS if pattern.match(key)), None)


def unknown_keys(lines: Iterable[Mapping[str, Any]]) -> list[str]:
    """The keys of ``lines`` (``metrics.jsonl`` records) that the catalogue lacks, sorted."""
    return sorted({key for line in lines for key in line if describe(key) is None})
