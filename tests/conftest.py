"""Shared test set-up: one thread per torch process (2-core machines), offline hubs."""

import os

# Set before torch is imported anywhere: two torch processes with two threads each on two cores
# run many times slower than with one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _has_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (starting one costs ~10 s).

    8 logical CPUs on 2 cores: the actors of a run mostly take turns. The node also advertises
    the cluster files' rollout-node resource (``rollout_node: 2``), so that placement on custom
    resources is tested against a live cluster."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=8, resources={"rollout_node": 2.0}, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}})
    yield ray
    ray.shutdown()
