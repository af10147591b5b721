"""The memory service in a local Ray cluster: scoring, concurrent calls, snapshots, restarts,
sharding. Uses the model-free ``hash`` embedder so actors start fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from memrl.actors.memory import MemoryClient
from memrl.memory import MemoryRewarder, MemorySettings
from memrl.memory.inspection import inspect_snapshot
from memrl.memory.store import read_shard


@pytest.fixture(autouse=True)
def _ray(ray_cluster):
    """Every test here talks to the session's Ray cluster."""


def batches(num_steps: int, seed: int = 0, per_question: int = 4):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_steps):
        questions = [f"question {int(q)}" for q in rng.integers(0, 12, 3) for _ in range(per_question)]
        reasonings = [f"reasoning {int(t)}" for t in rng.integers(0, 60, len(questions))]
        out.append((questions, reasonings, [bool(c) for c in rng.random(len(questions)) < 0.4]))
    return out


SETTINGS = MemorySettings.default(
    k=2, warmup=1, capacity_keys=6, capacity_values=3, window=10, embedder="hash", device="cpu"
)


def same_contents(path_a, path_b) -> None:
    a, b = read_shard(path_a), read_shard(path_b)
    assert a.state == b.state
    for name in a.memories:
        x, y = a.memories[name], b.memories[name]
        np.testing.assert_array_equal(x.keys, y.keys)
        np.testing.assert_array_equal(x.values, y.values)
        assert x.questions == y.questions and x.value_texts == y.value_texts and x.next_evict == y.next_evict


def wait_for_restart(client: MemoryClient, timeout_s: float = 60.0) -> str | None:
    """ray.kill is asynchronous: poll until the restarted instance answers."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if client.metrics()["restarted"] == 1.0:
                return client.wait_ready()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            pass
        time.sleep(0.2)
    raise TimeoutError("the memory actor did not come back")


def test_actor_scores_like_the_library_and_restarts_from_its_snapshot(tmp_path):
    client = MemoryClient(SETTINGS, num_cpus=0.5, snapshot_root=str(tmp_path / "root"))
    local = MemoryRewarder(SETTINGS)
    steps = batches(6)
    for questions, reasonings, correct in steps[:4]:
        got = client.score_and_insert(questions, reasonings, correct)
        want = local.score_and_insert(questions, reasonings, correct)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    snap = client.snapshot(tmp_path / "snap-4")
    client.score_and_insert(*steps[4])  # after the snapshot: lost by the crash below
    metrics = client.metrics()
    assert metrics["steps_done"] == 5 and metrics["restarted"] == 0
    assert metrics["latency_p99_ms"] >= metrics["latency_p50_ms"] > 0

    ray.kill(client.actor, no_restart=False)
    assert wait_for_restart(client) == snap
    after = client.metrics()
    assert after["restarted"] == 1.0 and after["steps_done"] == 4
    assert after["success_keys"] == local.shard.success.num_keys  # local stopped at step 4 too
    client.snapshot(tmp_path / "after-restart")
    same_contents(tmp_path / "snap-4", tmp_path / "after-restart")
    # and it carries on exactly as the library does from the same snapshot
    local = MemoryRewarder.from_snapshot(snap)
    for questions, reasonings, correct in steps[4:]:
        got = client.score_and_insert(questions, reasonings, correct)
        want = local.score_and_insert(questions, reasonings, correct)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    ray.kill(client.actor, no_restart=True)


def test_concurrent_requests_are_scored_one_at_a_time():
    settings = MemorySettings.reference(
        k=2, warmup=2, capacity_keys=6, capacity_values=3, embedder="hash", device="cpu"
    )
    client = MemoryClient(settings, num_cpus=0.5)
    client.wait_ready()
    # Ray does not order concurrent calls to an async actor, so all requests are identical:
    # whatever order they are taken in, reference mode must give exactly the rewards of ten
    # sequential calls; calls that interleaved inside the memory would not.
    request = batches(1, seed=3, per_question=2)[0]
    results = ray.get([client.score_and_insert_async(*request, step=0) for _ in range(10)], timeout=120)
    local = MemoryRewarder(settings)
    expected = [local.score_and_insert(*request, step=0) for _ in range(10)]
    as_keys = lambda pairs: sorted(tuple(np.concatenate(p).tolist()) for p in pairs)  # noqa: E731
    assert as_keys(results) == as_keys(expected)
    assert len(set(as_keys(expected))) > 1  # the state really changes from call to call
    metrics = client.metrics()
    assert metrics["requests"] == 10
    with pytest.raises(ValueError, match="one entry per response"):
        try:
            client.score_and_insert(["q"], ["a", "b"], [1])
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
    ray.kill(client.actor, no_restart=True)


def test_sharded_service_equals_single_memory(tmp_path):
    settings = MemorySettings.default(k=3, warmup=1, capacity_keys=40, capacity_values=3, embedder="hash", device="cpu")
    client = MemoryClient(settings, num_shards=2, num_cpus=0.5, snapshot_root=str(tmp_path / "root"))
    local = MemoryRewarder(settings)
    for questions, reasonings, correct in batches(5, seed=7):
        got = client.score_and_insert(questions, reasonings, correct)
        want = local.score_and_insert(questions, reasonings, correct)
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    metrics = client.metrics()
    assert metrics["success_keys"] == local.shard.success.num_keys
    assert metrics["failure_values"] == local.shard.failure.num_values
    client.snapshot(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "shards.json").is_file()
    report = inspect_snapshot(tmp_path / "sharded")
    assert f"success memory: {local.shard.success.num_keys} keys" in report and "shards 2" in report
    for handle in [client.actor, *client.peers]:
        ray.kill(handle, no_restart=True)
