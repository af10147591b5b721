"""``official: true``: one config switch that turns a run into the setup of the official code.

The published Memory-R+ numbers came from the official script (TRL 0.14 ``GRPOTrainer`` and its
``FastKNNMemory``), not from the paper's definitions, which are memrl's defaults. Reproducing
that code needs several keys at once; forgetting one silently changes the run (e.g. a 50-step
explore warm-up instead of 500 failure-memory keys). ``official: true`` sets all of them:

- ``memory``: reference mode (insert before score, the code's normalisation quirks, keys merged
  as the code's one-text-at-a-time encoder merges them), K = 1, 10,000 keys, 100 values per key
  (Memory-R: 1,000), window 100, explore after 500 distinct failure-memory questions, no
  annealing (:data:`OFFICIAL_MEMORY`, also behind :meth:`MemorySettings.reference`);
- ``grpo``: TRL 0.14's loss (each completion's token mean, then the mean over completions),
  rewards scaled by the group std, β = 0.04, temperature 0.9, top-p 1 (TRL 0.14 defaults the
  script kept), on-policy sampling;
- ``task.verifier: exact``: the code's correctness reward, exact string match.

Precedence: the official values replace what a ``base:`` file says; a key written in the
top-level file itself or given as a command-line override wins over them (``memrl plan`` lists
such keys), so a faithful config can still state a deliberate deviation next to its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Raw-tree entry (not a config key) carrying the keys that win over the official values.
OFFICIAL_EXPLICIT = "__official_explicit__"

# The official code's memory (``FastKNNMemory`` as constructed by its GSM8K script).
OFFICIAL_MEMORY: dict[str, Any] = {
    "mode": "reference",
    "k": 1,
    "capacity_keys": 10_000,
    "capacity_values": 100,
    "warmup": 500,
    "warmup_unit": "failure_keys",
    "anneal_rate": 1.0,
    "window": 100,
}
# The official Memory-R run keeps ten times as many values per key.
MEMORY_R_CAPACITY_VALUES = 1_000

# TRL 0.14 GRPOTrainer as the official script ran it (defaults it did not override).
OFFICIAL_TRAINING: dict[str, Any] = {
    "grpo.loss_aggregation": "seq_mean_token_mean",
    "grpo.scale_rewards": "std",
    "grpo.filter_zero_variance": False,
    "grpo.beta": 0.04,
    "grpo.temperature": 0.9,
    "grpo.top_p": 1.0,
    "rollout.mode": "sync",
    "task.verifier": "exact",
}


def official_values(method: str) -> dict[str, Any]:
    """Dotted config key -> value of the official code's setup for ``method``."""
    memory = dict(OFFICIAL_MEMORY)
    if method == "memoryr":
        memory["capacity_values"] = MEMORY_R_CAPACITY_VALUES
    out = {f"memory.{key}": value for key, value in memory.items()}
    out.update(OFFICIAL_TRAINING)
    return out


def flat_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every leaf of a nested mapping (``{"a": {"b": 1}}`` -> ``{"a.b"}``)."""
    keys: set[str] = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys |= flat_keys(value, path + ".")
        else:
            keys.add(path)
    return keys


def apply_official(tree: dict[str, Any], explicit: Iterable[str]) -> list[str]:
    """Write the official values into a raw config ``tree`` (in place), except keys in
    ``explicit`` (set in the top-level file or on the command line). Returns those kept keys
    whose value differs from the official one, sorted."""
    explicit = set(explicit)
    kept = []
    for dotted, value in official_values(str(tree.get("method", "memoryr+"))).items():
        parts = dotted.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if dotted in explicit:
            if node.get(parts[-1]) != value:
                kept.append(dotted)
            continue
        node[parts[-1]] = value
    return sorted(kept)
