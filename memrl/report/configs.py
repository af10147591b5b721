"""A run's config as the report shows it: shortened to what shapes learning, and compared."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from memrl.report.document import Table
from memrl.report.runs import Run

# Left out of the shortened config: they do not change what a run learns.
_UNINFORMATIVE = ("output_dir", "logging", "ray")
_RESOURCE_SETTINGS = ("num_cpus", "num_gpus", "num_cpus_per_worker", "num_gpus_per_worker",
                      "gpu_memory_utilization", "num_shards", "micro_batch_size",
                      "gradient_checkpointing", "cache_dir", "timeout_s", "save_every_steps")
_MEMORY_METHODS = ("memoryr", "memoryr+", "explore")


def shorten_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape what a run learns: nulls, the output/logging/Ray sections,
    resource settings (CPUs, GPUs, micro-batches, timeouts, save interval), the memory section
    of non-memory methods, the random bonus of methods other than r1+random, the tiny-model
    section of hub models and the settings of tasks other than ``task.name`` are left out."""
    method = config.get("method")
    task_name = (config.get("task") or {}).get("name")
    model_name = (config.get("model") or {}).get("name_or_path")

    def prune(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        kept = {}
        for key, value in node.items():
            here = path + (str(key),)
            if value is None or (not path and key in _UNINFORMATIVE) or (
                    path and key in _RESOURCE_SETTINGS):
                continue
            if here == ("memory",) and method not in _MEMORY_METHODS:
                continue
            if here == ("random_bonus",) and method != "r1+random":
                continue
            if here == ("model", "tiny") and model_name != "tiny":
                continue
            if path == ("task",) and isinstance(value, dict) and key != task_name:
                continue
            value = prune(value, here)
            if value != {}:
                kept[key] = value
        return kept

    return prune(config, ())


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(runs: Sequence[Run]) -> Table | None:
    """A table of the dotted settings whose values differ between ``runs`` (a column per run,
    values as JSON, ``—`` where a run lacks the key); None when the configs agree."""
    flats = [_flatten({k: v for k, v in run.config.items() if k not in _UNINFORMATIVE})
             for run in runs]
    keys = sorted({k for flat in flats for k in flat})
    missing = object()
    differing = [k for k in keys if len({json.dumps(f.get(k, missing), default=str)
                                          for f in flats}) > 1]
    if not differing:
        return None
    rows = tuple((k,) + tuple("—" if k not in f else json.dumps(f[k]) for f in flats)
                 for k in differing)
    return Table(("setting",) + tuple(run.name for run in runs), rows)
