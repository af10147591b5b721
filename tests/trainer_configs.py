"""Small, fast trainer configurations shared by the end-to-end tests."""

from pathlib import Path

from memrl.config import Config, load_config

# A model of ~40k parameters, warm-started for a handful of steps: fast, not meant to learn.
TINY = [
    "model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
    "model.tiny.num_heads=2", "model.tiny.intermediate_size=64", "model.tiny.warmstart_steps=5",
    "model.tiny.warmstart_examples=64", "model.tiny.warmstart_batch_size=8", "model.tiny.habit_steps=0",
]
FAST = [
    "task.eval_size=8", "grpo.num_generations=4", "grpo.batch_size=16",
    "grpo.max_completion_length=24", "learner.micro_batch_size=16", "logging.progress_bar=false",
    "logging.tensorboard=true", "memory.warmup=1", "trainer.warmup_ratio=0.0", "trainer.lr=1e-3",
    "trainer.timeout_s=240",
    # One-step problems: TINY's 300-token tokenizer spells a two-step prompt in more than the
    # default's 128 prompt tokens, which vLLM refuses.
    "task.arith.min_steps=1", "task.arith.max_steps=1",
    # transformers: these tests are about the trainer, and vLLM cannot run TINY's head size 16
    # (tests/test_rollout.py runs the trainer on vLLM).
    "rollout.engine=hf",
    # The layout these end-to-end and fault tests were written for: two synchronous workers (a
    # worker can die while another carries on) computing in float32 (resumed runs are compared
    # with uninterrupted ones exactly). The default's own layout, one asynchronous worker in
    # model.dtype auto, is the first-run and default-run tests'.
    "rollout.mode=sync", "rollout.num_workers=2", "model.dtype=float32",
]


def make_config(tmp_path: Path, *overrides: str) -> Config:
    """The default config made tiny and fast, writing under ``tmp_path``."""
    return load_config(None, [f"output_dir={tmp_path / 'run'}",
                              f"model.tiny.cache_dir={tmp_path.parent / 'tiny-cache'}",
                              *TINY, *FAST, *overrides])


def assert_audit_clean(run: Path | str, steps: int) -> None:
    """``memrl audit`` of the run directory: its ledger records steps 1 to ``steps`` and every
    prompt they scheduled was trained exactly once, in order, on fresh enough weights."""
    from memrl.audit import audit_run

    result = audit_run(run)
    assert result.clean and result.steps == steps, result.to_dict()
