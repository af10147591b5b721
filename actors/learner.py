"""Ray shells for the learner: one ``LearnerWorker`` actor per data-parallel rank, and the
driver-side ``LearnerGroup`` that places them, shards batches and gathers their results.

The work happens in ``memrl.learner.PolicyTrainer``; these classes only set resources, the
rendezvous and timeouts. Learner actors do not restart (``max_restarts=0``): a restarted rank
could not rejoin the running process group, so a failure surfaces as a ``LearnerError`` naming
the rank, its node and the method, and the driver rebuilds the group from the last checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from memrl.actors.startup import announce
from memrl.checkpoint import digest_dir, local_copy, local_staging
from memrl.errors import UnexplainedFault
from memrl.learner.distributed import free_port, node_address, set_rank_env
from memrl.learner.policy import LearnerSettings, PolicyTrainer
from memrl.learner.stats import merge_rank_stats
from memrl.learner.step import StepShard, shard_step, step_inputs, trained_groups
from memrl.learner.threads import node_cores, resolve_train_threads, torch_threads
from memrl.ledger import TrainedGroup, merge_trained
from memrl.terminal import redirect_actor_output
from memrl.types import RolloutBatch
from memrl.weights import PackedWeights


class LearnerError(UnexplainedFault, RuntimeError):
    """A learner rank failed or did not answer in time; the message names rank, node, method."""


@ray.remote(max_restarts=0)
class LearnerWorker:
    """One data-parallel rank: joins the process group and owns a ``PolicyTrainer``.

    Torch uses as many threads as the actor was given CPUs (Ray sets ``OMP_NUM_THREADS`` from
    ``num_cpus`` too, but torch's pool may already exist). ``rendezvous`` is rank 0's address
    and port; while it starts, the rank says what it is doing (:func:`announce`).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        rendezvous: tuple[str, int],
        settings: LearnerSettings,
    ) -> None:
        name = f"learner rank {rank}"
        redirect_actor_output(name)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        set_rank_env(rank, world_size, *rendezvous)
        self.rank = rank
        self.world_size = world_size
        self.trainer = PolicyTrainer(settings, progress=lambda stage: announce(name, stage))

        def threads(others_compute: bool) -> int:
            if self.trainer.device != "cpu":  # on a GPU the threads only launch kernels
                return torch.get_num_threads()
            # world_size: CPU learners are assumed to share one node, the cautious count
            return resolve_train_threads(settings.train_threads, others_compute=others_compute,
                                         assigned_cpus=cpus, cores=node_cores(), learners_on_node=world_size)

        self.train_threads = threads(settings.rollout_overlaps)
        self.reference_threads = threads(settings.rollout_overlaps or settings.scoring_overlaps_reference)
        print(f"{name}: {self.trainer.device}, {torch.get_num_threads()} torch thread(s), "
              f"{self.reference_threads} in the reference pass, {self.train_threads} in the optimiser step",
              flush=True)
        self._step: tuple[StepShard, torch.Tensor | None] | None = None

    def ping(self) -> dict[str, Any]:
        """Who and where this rank is, and its progress (cheap; for health checks)."""
        return {
            "rank": self.rank,
            "node": node_address(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": self.trainer.device,
            "steps": self.trainer.steps,
            "weight_version": self.trainer.weight_version,
        }

    def begin_step(self, *batches: RolloutBatch) -> dict[str, Any]:
        """Take this rank's shard of a step (``memrl.learner.step.shard_step``) and compute its
        reference log-probs while the driver scores the rewards.

        ``batches`` are the step's rollout chunks (Ray resolves the refs the driver passed).
        The shard is kept for :meth:`finish_step`, which needs the advantages.
        """
        shard = shard_step(list(batches), self.rank, self.world_size,
                           self.trainer.settings.micro_batch_size)
        started = time.perf_counter()
        with torch_threads(self.reference_threads):
            ref_logp = (self.trainer.ref_logprobs(shard.batch)
                        if self.trainer.reference is not None else None)
        self._step = (shard, ref_logp)
        return {"rows": shard.global_seqs, "reference_seconds": time.perf_counter() - started}

    def finish_step(self, advantages: torch.Tensor, keep: torch.Tensor | None = None
                    ) -> tuple[dict[str, float], dict[int, TrainedGroup]]:
        """One optimiser step on the shard prepared by :meth:`begin_step`.

        ``advantages`` [N] and ``keep`` [N] (bool; rows to train on, None = all) cover the whole
        step (``memrl.learner.step.step_inputs`` slices this rank's rows). Returns the step's
        statistics and, per prompt group of the shard, what entered the loss
        (``memrl.learner.step.trained_groups``: the prompt ledger's counts).
        """
        if self._step is None:
            raise RuntimeError(f"learner rank {self.rank}: finish_step without begin_step")
        (shard, ref_logp), self._step = self._step, None
        batch, adv, options = step_inputs(shard, advantages, keep, ref_logp)
        with torch_threads(self.train_threads):
            stats = self.trainer.optimizer_step(batch, adv, **options)
        return stats, trained_groups(shard.batch, batch, self.trainer.row_gaps)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's full weights on CPU (collective under ZeRO-3: call on every rank)."""
        return self.trainer.state_dict_for_publish()

    @ray.method(num_returns=2)
    def publish_weights(self, version: int) -> tuple[PackedWeights | None, dict[str, Any]]:
        """Pack the weights as ``version``: rank 0 returns them, other ranks None.

        Every rank must be called (the ZeRO-3 gather is collective, and each rank records the
        version its weights now carry). The second return value is a small summary the driver
        can fetch without pulling the weights.
        """
        started = time.perf_counter()
        packed = self.trainer.publish(version)
        summary = {
            "version": int(version),
            "nbytes": packed.nbytes if packed is not None else 0,
            "seconds": time.perf_counter() - started,
        }
        return packed, summary

    def export_hf(self, directory: str) -> None:
        """Write the policy as a Hugging Face folder (every rank is called; rank 0 writes)."""
        self.trainer.save_hf(directory)

    def save(self, directory: str, export_hf: bool = True) -> dict[str, dict[str, Any]]:
        """Save resumable state to ``directory`` (a path or a cloud URI) and, with
        ``export_hf``, a Hugging Face folder in ``directory/hf``. Every rank must be called.
        Returns the digests of the files this rank wrote (for the checkpoint manifest)."""
        with local_staging(directory) as local:
            self.trainer.save_state(local)
            if export_hf:
                self.trainer.save_hf(local / "hf")
            return digest_dir(local)

    def load(self, directory: str) -> None:
        """Restore the state :meth:`save` wrote (a path or a cloud URI)."""
        with local_copy(directory) as local:
            self.trainer.load_state(local)


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, int]:
    """The node IP and a free port on the node this task runs on (rank 0's bundle)."""
    return node_address(), free_port()


class LearnerGroup:
    """Driver-side handle on ``num_learners`` data-parallel ``LearnerWorker`` actors.

    Each rank gets a placement-group bundle of ``num_cpus_per_learner`` CPUs and
    ``num_gpus_per_learner`` GPUs (``strategy`` "PACK" or "SPREAD"); the rendezvous is rank
    0's node IP and a free port found there. Every remote call is awaited at most
    ``timeout_s`` seconds; a failure or time-out raises ``LearnerError``. With ``wait=False``
    the constructor returns once the ranks are asked for, and :meth:`poll_ready` says when they
    have started (the driver starts its other actors meanwhile).
    """

    def __init__(
        self,
        settings: LearnerSettings,
        num_learners: int,
        *,
        num_cpus_per_learner: float = 1.0,
        num_gpus_per_learner: float = 0.0,
        resources_per_learner: dict[str, float] | None = None,
        timeout_s: float = 600.0,
        strategy: str = "PACK",
        wait: bool = True,
    ) -> None:
        if num_learners < 1:
            raise ValueError(f"num_learners = {num_learners}: must be >= 1")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s = {timeout_s}: must be > 0")
        self.settings = settings
        self.timeout_s = timeout_s
        bundle: dict[str, float] = {"CPU": num_cpus_per_learner}
        if num_gpus_per_learner > 0:
            bundle["GPU"] = num_gpus_per_learner
        bundle.update(resources_per_learner or {})
        self._bundle = bundle
        self._pg = placement_group([dict(bundle) for _ in range(num_learners)], strategy=strategy)
        # Rank 0's node IP and a free port there, found once the group is placed; Ray resolves
        # the ref before the ranks start, so nothing here waits for the placement.
        rendezvous = _rendezvous_address.options(scheduling_strategy=self._strategy(0)).remote()
        # Any: Ray types a handle as ActorProxy (the handle or the class), which types no call
        # of an actor method with a default argument or two returns, nor ray.kill.
        self.workers: list[Any] = [
            LearnerWorker.options(
                num_cpus=num_cpus_per_learner,
                num_gpus=num_gpus_per_learner,
                resources=dict(resources_per_learner or {}),
                scheduling_strategy=self._strategy(rank),
            ).remote(rank, num_learners, rendezvous, settings)
            for rank in range(num_learners)
        ]
        # Nodes are known once the actors answer; until then errors name none. Errors name a
        # node by address and Ray node id (nodes of one machine share an address).
        self.nodes = ["(not yet known)"] * num_learners
        self.node_ids: list[str | None] = [None] * num_learners
        self._first_pings: list[ray.ObjectRef] | None = [w.ping.remote() for w in self.workers]
        if wait:
            self.wait_ready()

    def poll_ready(self) -> bool:
        """Whether every rank has started (does not block); raises ``LearnerError`` naming the
        rank when one failed to start."""
        if self._first_pings is None:
            return True
        done, _ = ray.wait(self._first_pings, num_returns=len(self._first_pings), timeout=0)
        if len(done) < len(self._first_pings):
            for ref in done:  # a rank that failed answers at once: report it now
                self._answer(self._first_pings.index(ref), ref, "start-up")
            return False
        answers = [self._answer(rank, ref, "start-up") for rank, ref in enumerate(self._first_pings)]
        self.node_ids = [info["node_id"] for info in answers]
        self.nodes = [f"{info['node']} (id {info['node_id'][:12]})" for info in answers]
        self._first_pings = None
        return True

    def wait_ready(self) -> None:
        """Block until every rank has started (up to ``timeout_s``); on failure the group is shut
        down (the caller gets no handle to clean up after a failed start)."""
        try:
            placed, _ = ray.wait([self._pg.ready()], timeout=self.timeout_s)
            if not placed:
                raise LearnerError(
                    f"the cluster could not place {self.world_size} learners of {self._bundle} within "
                    f"{self.timeout_s} s: add nodes or lower learner.num_cpus / learner.num_gpus")
            deadline = time.monotonic() + self.timeout_s
            while not self.poll_ready():
                if time.monotonic() > deadline:
                    raise LearnerError(f"the learners did not start within {self.timeout_s} s")
                time.sleep(0.1)
        except LearnerError:
            self.shutdown()
            raise

    def _strategy(self, rank: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(
            placement_group=self._pg, placement_group_bundle_index=rank
        )

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def _wait_all(self, method: str, refs: list[ray.ObjectRef]) -> list[Any]:
        """Results of one call per rank, in rank order; the first failure or the deadline
        raises ``LearnerError`` naming the rank, its node and ``method``."""
        deadline = time.monotonic() + self.timeout_s
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(
                pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            if not ready:
                late = sorted(rank_of[ref] for ref in pending)
                where = ", ".join(f"rank {r} on node {self.nodes[r]}" for r in late)
                raise LearnerError(
                    f"learner {method} did not finish within {self.timeout_s} s: {where} "
                    "(a stuck collective usually means another rank died)"
                )
            rank = rank_of[ready[0]]
            results[rank] = self._answer(rank, ready[0], method)
        return [results[rank] for rank in range(len(refs))]

    def _answer(self, rank: int, ref: ray.ObjectRef, method: str) -> Any:
        """The finished call ``ref`` of ``rank``'s; ``LearnerError`` naming both when it failed."""
        try:
            return ray.get(ref)
        except RayError as exc:
            raise LearnerError(
                f"learner rank {rank} on node {self.nodes[rank]} failed in {method}: {exc}"
            ) from exc

    def ping(self) -> list[dict[str, Any]]:
        """Every rank's ``ping`` (rank, node, pid, device, steps, weight_version)."""
        return self._wait_all("ping", [w.ping.remote() for w in self.workers])

    def begin_step(self, batch_refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Start the step on every rank: each takes its shard of the rollout chunks
        ``batch_refs`` (read from the object store, never through the driver) and computes its
        reference log-probs. Returns at once; :meth:`wait_reference` waits for it."""
        return [w.begin_step.remote(*batch_refs) for w in self.workers]

    def wait_reference(self, started: list[ray.ObjectRef]) -> list[dict[str, Any]]:
        """Wait for :meth:`begin_step` on every rank (the reference pass); returns each rank's
        summary, which :meth:`finish_step` takes."""
        return self._wait_all("begin_step", started)

    def finish_step(self, prepared: list[dict[str, Any]], advantages: torch.Tensor,
                    keep: torch.Tensor | None = None) -> tuple[dict[str, float], dict[int, TrainedGroup]]:
        """One optimiser step on all ranks, on the shards that :meth:`wait_reference` reported.

        ``advantages`` [N] and ``keep`` [N] (rows to train on) cover the whole step in chunk
        order. Returns the merged statistics plus the slowest rank's ``reference_seconds``, and
        what entered the loss per prompt group (by its position in the step), merged over ranks.
        """
        n = prepared[0]["rows"]
        if advantages.shape != (n,):
            raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected ({n},)")
        refs = [w.finish_step.remote(advantages, keep) for w in self.workers]
        per_rank = self._wait_all("finish_step", refs)
        stats = merge_rank_stats([rank_stats for rank_stats, _ in per_rank])
        stats["reference_seconds"] = max(info["reference_seconds"] for info in prepared)
        return stats, merge_trained([groups for _, groups in per_rank])

    def train_on_batch(self, batch: RolloutBatch, advantages: torch.Tensor,
                       keep: torch.Tensor | None = None) -> dict[str, float]:
        """:meth:`begin_step`, :meth:`wait_reference` and :meth:`finish_step` on one batch held
        by the caller; returns the merged statistics."""
        prepared = self.wait_reference(self.begin_step([ray.put(batch)]))
        stats, _ = self.finish_step(prepared, advantages, keep)
        return stats

    def publish_weights(self, version: int) -> tuple[ray.ObjectRef, dict[str, Any]]:
        """Publish the weights as ``version``: an ObjectRef of rank 0's ``PackedWeights``
        (owned by this driver; pass it on to rollout workers) and rank 0's summary."""
        pairs = [w.publish_weights.remote(version) for w in self.workers]
        summaries = self._wait_all("publish_weights", [summary for _, summary in pairs])
        return pairs[0][0], summaries[0]

    def save(self, directory: str | Path, *, export_hf: bool = True) -> dict[str, dict[str, Any]]:
        """Checkpoint every rank into ``directory`` (see ``LearnerWorker.save``); returns the
        digests of every file written (paths relative to ``directory``)."""
        files: dict[str, dict[str, Any]] = {}
        for digests in self._wait_all(
            "save", [w.save.remote(str(directory), export_hf) for w in self.workers]
        ):
            files.update(digests)
        return files

    def export_hf(self, directory: str | Path) -> None:
        """Write the policy (safetensors) and tokenizer as a Hugging Face folder."""
        self._wait_all("export_hf", [w.export_hf.remote(str(directory)) for w in self.workers])

    def load(self, directory: str | Path) -> None:
        """Restore every rank from ``directory``."""
        self._wait_all("load", [w.load.remote(str(directory)) for w in self.workers])

    def shutdown(self) -> None:
        """Kill the actors and free their placement group."""
        for worker in self.workers:
            ray.kill(worker)
        remove_placement_group(self._pg)
