"""``memrl plan``: a dry run that says in seconds whether a training job can run, and where.

It resolves the config, then checks, in this order, and stops at nothing (every check is
reported) but exits non-zero naming the first problem:

1. placement: every actor's bundle (CPUs, whole or fractional GPUs, custom resources) fits on
   the nodes of the cluster the job would join (``ray.address`` / ``RAY_ADDRESS``, or the
   local one ``memrl train`` would start), packed as Ray packs them: a fractional GPU share
   must fit on one physical GPU, whole GPUs are taken whole;
2. the model and its tokenizer (a folder, the Hugging Face cache, or a reachable hub) and the
   datasets (local files, the cache, or the hub);
3. the checkpoint URI is writable (a probe file is written and removed);
4. engines and indexes the config asks for are installed (vLLM; FAISS GPU, with the CPU
   fallback reported as a warning).

It also estimates memory per actor: vLLM's weights and KV cache within
``gpu_memory_utilization``; each learner rank's parameters, gradients and AdamW states under
the chosen ZeRO stage (bf16 with fp32 master weights, or fp32), plus the frozen KL reference;
the memory's keys and values at full capacity. Activations are not estimated.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrl.cluster.placement import (
    Node,
    fit_problem,
    initial_workers,
    learner_demands,
    memory_demands,
    rollout_demand,
    take,
)
from memrl.config import Config
from memrl.model.precision import auto_dtype
from memrl.report.table import text_table

GIB = 1024**3
DEFAULT_GPU_MEMORY_GIB = 80.0  # when no GPU is visible here and the cluster does not say
EMBED_DIM = 384  # all-MiniLM-L6-v2
FAISS_GPU_SCRATCH_GIB = 0.25  # memrl.memory.index.GPU_TEMP_MEMORY_BYTES


@dataclass
class ActorGroup:
    """``count`` identical actors, each asking Ray for ``bundle``."""

    name: str
    count: int
    bundle: dict[str, float]
    memory: str = ""  # estimate, human-readable

    @property
    def gpus(self) -> float:
        return self.bundle.get("GPU", 0.0)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # shown, but the job can still run


@dataclass
class Plan:
    """The resolved job: actor groups, the checks and their outcome."""

    groups: list[ActorGroup]
    checks: list[Check] = field(default_factory=list)
    cluster: str = ""

    @property
    def first_problem(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def table(self) -> str:
        """The plan as a plain-text table (actors, then checks)."""
        rows = [("actor", "count", "per actor (Ray resources)", "memory estimate per actor")]
        for g in self.groups:
            bundle = ", ".join(f"{k} {v:g}" for k, v in g.bundle.items() if v)
            rows.append((g.name, str(g.count), bundle, g.memory))
        lines = [f"cluster: {self.cluster}", text_table(rows), ""]
        width = max(len(c.name) for c in self.checks) if self.checks else 0
        for c in self.checks:
            mark = "ok  " if c.ok and not c.warning else ("warn" if c.ok else "FAIL")
            lines.append(f"{mark}  {c.name.ljust(width)}  {c.detail}")
        return "\n".join(lines)


# ---- actors and memory estimates ------------------------------------------------------------
def actor_groups(cfg: Config) -> list[ActorGroup]:
    """The Ray actors ``memrl train`` starts for ``cfg`` and what each asks for (the demands
    its start-up check packs, :mod:`memrl.cluster.placement`)."""
    groups = [ActorGroup("rollout", initial_workers(cfg), rollout_demand(cfg, "rollout").resources),
              ActorGroup("learner", cfg.learner.num_learners, learner_demands(cfg)[0].resources)]
    memory = memory_demands(cfg)
    if memory:
        groups.append(ActorGroup("memory", len(memory), memory[0].resources))
    return groups


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need from a model's config."""

    params: int
    layers: int
    kv_heads: int
    head_dim: int


def model_shape(cfg: Config, source: str) -> ModelShape:
    """Parameter count and attention shape, from the model's config alone (no weights: the
    model is built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if cfg.model.name_or_path == "tiny":
        t = cfg.model.tiny
        hf = LlamaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                         intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                         num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
                         max_position_embeddings=t.max_position_embeddings, tie_word_embeddings=True)
    else:
        hf = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    params = sum(p.numel() for p in model.parameters())
    heads = hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    return ModelShape(params, hf.num_hidden_layers, getattr(hf, "num_key_value_heads", None) or heads,
                      head_dim)


def _dtype_bytes(cfg: Config) -> int:
    return 4 if cfg.model.dtype == "float32" or cfg.model.name_or_path == "tiny" else 2


def learner_bytes(params: int, zero_stage: int, world_size: int, bf16: bool, reference: bool) -> int:
    """One rank's parameters, gradients and AdamW states (plus the frozen reference copy).

    bf16: bf16 weights and gradients, fp32 master weights and both Adam moments (16 bytes per
    parameter); fp32: weights, gradients and two moments (16 bytes). ZeRO-1 partitions the
    optimizer states (master weights and moments) over the ranks, ZeRO-2 also the gradients,
    ZeRO-3 also the weights."""
    weights, grads, optim = (2, 2, 12) if bf16 else (4, 4, 8)
    n = max(world_size, 1)
    per_param = (
        weights / (n if zero_stage >= 3 else 1)
        + grads / (n if zero_stage >= 2 else 1)
        + optim / (n if zero_stage >= 1 else 1)
    )
    total = params * per_param
    if reference:
        total += params * (2 if bf16 else 4)
    return int(total)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 1024**2:.1f} MiB"


def estimate_memory(cfg: Config, groups: list[ActorGroup], shape: ModelShape, gpu_memory_gib: float) -> str | None:
    """Fill each group's memory estimate; returns a problem (vLLM's share too small for its
    weights) or None."""
    problem = None
    dtype = _dtype_bytes(cfg)
    weights = shape.params * dtype
    seq = cfg.grpo.max_prompt_length + cfg.grpo.max_completion_length
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype
    for g in groups:
        if g.name == "rollout":
            if cfg.rollout.engine == "vllm" and g.gpus:
                budget = cfg.rollout.gpu_memory_utilization * gpu_memory_gib * GIB
                kv = budget - weights
                g.memory = (f"GPU: weights {_gib(weights)} + KV cache {_gib(max(kv, 0))} "
                            f"(gpu_memory_utilization {cfg.rollout.gpu_memory_utilization:g} of "
                            f"{gpu_memory_gib:g} GiB)")
                if kv <= 0:
                    problem = (f"rollout: vLLM's share ({_gib(budget)}) does not hold the weights "
                               f"({_gib(weights)}): raise rollout.gpu_memory_utilization")
                else:
                    g.memory += f" = {int(kv // kv_per_token):,} tokens"
                    g.memory += f" (a step needs {cfg.grpo.batch_size * seq:,})"
            else:
                g.memory = f"{'GPU' if g.gpus else 'host'}: weights {_gib(weights)} + KV cache"
        elif g.name == "learner":
            bf16 = cfg.model.dtype == "bfloat16" or (
                cfg.model.dtype == "auto" and auto_dtype(on_cpu=g.gpus == 0) == "bfloat16")
            need = learner_bytes(shape.params, cfg.learner.zero_stage, g.count, bf16, cfg.grpo.beta > 0)
            g.memory = (f"{'GPU' if g.gpus else 'host'}: {_gib(need)} (ZeRO-{cfg.learner.zero_stage}, "
                        f"{'bf16' if bf16 else 'fp32'}, {shape.params / 1e6:.1f}M params"
                        f"{', + KL reference' if cfg.grpo.beta > 0 else ''}; activations extra)")
        elif g.name == "memory":
            m = cfg.memory
            memories = 2 if cfg.uses_explore else 1
            keys = memories * m.capacity_keys * EMBED_DIM * 4 / m.num_shards
            values = memories * m.capacity_keys * m.capacity_values * EMBED_DIM * 4 / m.num_shards
            where = f"GPU: keys {_gib(keys)} + FAISS scratch {FAISS_GPU_SCRATCH_GIB:g} GiB; " if g.gpus else ""
            g.memory = f"{where}host: values {_gib(values)} at full capacity"
    return problem


# ---- placement ------------------------------------------------------------------------------
def nodes_from_ray(ray_nodes: Sequence[dict[str, Any]]) -> list[Node]:
    """Alive nodes of ``ray.nodes()`` with their total resources (what an idle cluster holds)."""
    out = []
    for n in ray_nodes:
        if not n.get("Alive", True):
            continue
        res = {k: float(v) for k, v in n.get("Resources", {}).items()
               if not k.startswith(("node:", "memory", "object_store_memory"))}
        out.append(Node(n.get("NodeManagerAddress", n.get("NodeID", "?")), res,
                         [1.0] * int(res.get("GPU", 0))))
    return out


def place(groups: Sequence[ActorGroup], nodes: list[Node]) -> str | None:
    """Pack every actor onto ``nodes`` (largest GPU request first, first fit); None when all
    fit, else the first actor that does not and why."""
    actors = [(g, i) for g in groups for i in range(g.count)]
    actors.sort(key=lambda a: (-a[0].gpus, -a[0].bundle.get("CPU", 0)))
    for group, i in actors:
        reasons = []
        for node in nodes:
            why = fit_problem(group.bundle, node)
            if why is None:
                take(group.bundle, node)
                break
            reasons.append(f"{node.name}: {why}")
        else:
            label = f"{group.name} actor {i + 1}/{group.count}"
            wants = ", ".join(f"{k} {v:g}" for k, v in group.bundle.items() if v)
            detail = "; ".join(reasons) or "the cluster has no nodes"
            return f"{label} ({wants}) cannot be placed: {detail}"
    return None


def cluster_nodes(cfg: Config, address: str | None) -> tuple[list[Node], str]:
    """The nodes the job would join, and a one-line description."""
    import ray

    address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return nodes_from_ray(ray.nodes()), "the Ray cluster this process is connected to"
    if address:
        ray.init(address=address, log_to_driver=False)
        try:
            return nodes_from_ray(ray.nodes()), f"Ray cluster at {address}"
        finally:
            ray.shutdown()
    cpus = float(cfg.ray.num_cpus or os.cpu_count() or 1)
    gpus = _local_gpus()
    node = Node("local", {"CPU": cpus, **({"GPU": float(gpus)} if gpus else {})}, [1.0] * gpus)
    return [node], f"the local cluster memrl train would start ({cpus:g} CPUs, {gpus} GPUs)"


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_gpu_memory_gib() -> float | None:
    """Memory of this machine's first GPU, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GIB


# ---- reachability -------------------------------------------------------------------------
def check_model(cfg: Config) -> tuple[Check, str | None]:
    """The model and tokenizer source; returns the check and a source to read its config from."""
    from memrl.model.loading import ModelUnavailableError, locate_model

    name = cfg.model.name_or_path
    if name == "tiny":
        return Check("model", True, "tiny: built offline (cached after the first run)"), "tiny"
    try:
        source = locate_model(name)
    except ModelUnavailableError as exc:
        return Check("model", False, str(exc)), None
    if source.kind == "hub":
        return Check("model", True, f"{name}: not cached, downloadable from {source.location}"), name
    folder = Path(source.location)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        if source.kind == "folder":
            return Check("model", False, f"{folder} has a model config but no tokenizer files"), None
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str):
            return Check("model", False, f"{name}: the cached copy has no tokenizer; download it again"), None
    return Check("model", True, f"{name}: {source.kind} {folder}"), str(folder)


def check_datasets(cfg: Config) -> Check:
    """Each split's source: a local file, generated, the Hugging Face cache or the hub."""
    from memrl.tasks import build_task
    from memrl.tasks.hub import DatasetUnavailableError, locate_hub_dataset

    task = build_task(cfg)
    hub_id, hub_config = task.hub_dataset() or (None, None)
    parts = []
    for split, path, option in (("train", cfg.data.path, "data.path"), ("test", cfg.data.eval_path, "data.eval_path")):
        if path:
            if not Path(path).is_file():
                return Check("datasets", False, f"{option} = {path}: no such file")
            parts.append(f"{split}: file {path}")
        elif hub_id is None:
            parts.append(f"{split}: generated")
        else:
            try:
                where = locate_hub_dataset(hub_id, split, config=hub_config, path_option=option)
            except DatasetUnavailableError as exc:
                return Check("datasets", False, str(exc))
            parts.append(f"{split}: {hub_id} from {where.split(' ', 1)[0]}")
    return Check("datasets", True, "; ".join(parts))


def check_checkpoint_uri(cfg: Config) -> Check:
    """Write and remove a probe file where checkpoints go."""
    uri = cfg.trainer.checkpoint_uri or cfg.output_dir
    probe = f"{uri.rstrip('/')}/.memrl-plan-{uuid.uuid4().hex[:8]}"
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(probe)
        parent = path.rsplit("/", 1)[0]
        existed = fs.exists(parent)
        fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(b"memrl plan probe")
        fs.rm(path)
        if not existed and fs.protocol in ("file", ("file", "local")):
            fs.rmdir(parent)  # a dry run leaves nothing behind
    except Exception as exc:  # any backend's error: missing credentials, read-only, no such bucket
        return Check("checkpoint", False, f"{uri} is not writable: {type(exc).__name__}: {exc}")
    return Check("checkpoint", True, f"{uri} writable")


def check_engines(cfg: Config) -> list[Check]:
    """vLLM installed when asked for; FAISS GPU for a memory on a GPU (CPU fallback: warning);
    FAISS GPU's k limit."""
    checks = []
    if cfg.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        checks.append(Check("engine", False, "rollout.engine = vllm but vLLM is not installed here "
                            "(pip install 'memrl[gpu]'), or use rollout.engine=auto"))
    if cfg.uses_memory and cfg.memory.num_gpus > 0:
        from memrl.memory.index import GPU_MAX_K, gpu_unavailable_reason

        if cfg.memory.k > GPU_MAX_K:
            checks.append(Check("memory index", False, f"memory.k = {cfg.memory.k} exceeds FAISS GPU's "
                                f"limit of {GPU_MAX_K}: lower it or use memory.num_gpus=0"))
        else:
            reason = gpu_unavailable_reason()
            if reason:
                checks.append(Check("memory index", True, f"GPU index unusable here ({reason}); "
                                    "the memory falls back to the CPU index", warning=True))
    return checks


# ---- the plan -------------------------------------------------------------------------------
def build_plan(cfg: Config, *, address: str | None = None, nodes: list[Node] | None = None,
               gpu_memory_gib: float | None = None) -> Plan:
    """Every check for ``cfg`` against the cluster (``nodes``: given, e.g. in tests)."""
    groups = actor_groups(cfg)
    if nodes is None:
        nodes, where = cluster_nodes(cfg, address)
    else:
        where = f"{len(nodes)} given nodes"
    plan = Plan(groups, cluster=where)
    problem = place(groups, nodes)
    gpus = math.fsum(g.gpus * g.count for g in groups)
    fits = f"all {sum(g.count for g in groups)} actors fit ({gpus:g} GPUs in all)"
    plan.checks.append(Check("placement", problem is None, problem or fits))
    model_check, source = check_model(cfg)
    plan.checks.append(model_check)
    if source is not None:
        memory_gib = gpu_memory_gib or local_gpu_memory_gib() or DEFAULT_GPU_MEMORY_GIB
        too_small = estimate_memory(cfg, groups, model_shape(cfg, source), memory_gib)
        if too_small:
            plan.checks.append(Check("memory estimate", False, too_small))
    plan.checks.append(check_datasets(cfg))
    plan.checks.append(check_checkpoint_uri(cfg))
    plan.checks.extend(check_engines(cfg))
    if cfg.official:
        from memrl.official import official_values

        pinned = official_values(cfg.method)
        kept = [k for k, v in pinned.items() if _get(cfg, k) != v]
        detail = f"{len(pinned)} keys set by official: true"
        detail += f"; kept from the config: {', '.join(f'{k}={_get(cfg, k)}' for k in kept)}" if kept else ""
        plan.checks.append(Check("official setup", True, detail, warning=bool(kept)))
    return plan


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def main_plan(cfg: Config, *, address: str | None = None, gpu_memory_gib: float | None = None) -> int:
    """Print the plan; 0 when the job can run, 2 naming the first problem otherwise."""
    import sys

    plan = build_plan(cfg, address=address, gpu_memory_gib=gpu_memory_gib)
    print(plan.table())
    problem = plan.first_problem
    if problem is not None:
        print(f"memrl plan: cannot run: {problem.name}: {problem.detail}", file=sys.stderr)
        return 2
    steps = cfg.trainer.max_steps
    print(f"ready: {steps} steps of {cfg.grpo.batch_size} completions; run `memrl train` with the same arguments")
    return 0

