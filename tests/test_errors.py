"""Bad inputs end in memrl's own message and exit code, and write or corrupt nothing.

Each case runs the real CLI (``memrl.cli.main``) in this process on a broken config, data
file, reward, checkpoint or snapshot; all fail before the model or Ray is needed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import pytest
from trainer_configs import TINY

from memrl.cli import main
from memrl.errors import PhaseTimeout, explain
from memrl.train.run_control import read_control
from memrl.verify import MAX_ANSWER_CHARS, check_answers


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what "nothing changed" compares)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


GOOD_ROW = b'{"question": "What is 1+1?", "answer": "2"}\n'


def _data(tmp: Path, train: bytes, name: str = "train.jsonl") -> list[str]:
    return ["task.name=gsm8k", "data.plain_answers=true", f"data.path={_write(tmp / name, train)}",
            f"data.eval_path={_write(tmp / 'eval.jsonl', GOOD_ROW)}"]


def _snapshot(tmp: Path, break_it) -> str:
    """A real memory snapshot, edited by ``break_it``, its manifest recomputed to match."""
    from memrl.memory import HashingEmbedder, MemoryRewarder, MemorySettings
    from memrl.memory.snapshot import MANIFEST, _digest_body

    rewarder = MemoryRewarder(MemorySettings.default(embedder="hash", device="cpu"), HashingEmbedder(16))
    rewarder.score_and_insert(["How many apples?"] * 3 + ["What is 2+2?"],
                              ["Count: 3.", "Add 1 and 2.", "I guess 7.", "2+2=4."], [1, 1, 0, 1])
    folder = tmp / "snap"
    rewarder.save(folder)
    break_it(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    body = manifest["body"]
    for name, entry in body["files"].items():
        data = (folder / name).read_bytes()
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest["sha256"] = _digest_body(body)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return str(folder)


def _drop_a_question(folder: Path) -> None:
    path = folder / "success_questions.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:-1]))


def _drop_a_value_text(folder: Path) -> None:
    path = folder / "success_value_texts.json"
    texts = json.loads(path.read_text())
    texts[0] = []
    path.write_text(json.dumps(texts))


# (case id, CLI arguments built from tmp_path, exit code, message pattern)
CASES = [
    ("config-not-utf8", lambda t: ["train", _write(t / "bad.yaml", b"seed: 1\n# caf\xe9\n")],
     2, r"bad\.yaml, line 2: not UTF-8 text"),
    ("config-unknown-key", lambda t: ["train", "trainer.max_stepz=3"], 2, r"max_stepz: unknown key"),
    ("data-not-utf8", lambda t: ["train", *_data(t, GOOD_ROW + b'{"question": "caf\xe9", "answer": "1"}\n')],
     2, r"train\.jsonl, line 2: not UTF-8 text .* column 18"),
    ("data-empty-train-file", lambda t: ["train", *_data(t, b"")],
     2, r"train\.jsonl: no usable records \(the file has no lines\)"),
    ("data-missing-file", lambda t: ["train", "task.name=gsm8k", f"data.path={t / 'nope.jsonl'}"],
     2, r"data file not found: .*nope\.jsonl"),
    ("data-bad-row", lambda t: ["train", *_data(t, b'{"q": "1+1", "answer": "2"}\n')],
     2, r"train\.jsonl, line 1: missing field 'question'"),
    ("data-malformed-json", lambda t: ["train", *_data(t, GOOD_ROW + b"{oops\n")],
     2, r"train\.jsonl, line 2: malformed JSON"),
    ("reward-not-importable", lambda t: ["train", "rewards=[{fn: 'no_such_module:fn', weight: 1.0}]"],
     2, r"no_such_module"),
    ("checkpoint-not-a-checkpoint", lambda t: ["train", "--resume", str(t)],
     2, r"checkpoint refused: .* no manifest\.json"),
    ("snapshot-missing", lambda t: ["memory", "inspect", str(t / "nothing")],
     2, r"memory snapshot refused: .*(missing|no snapshot)"),
    ("snapshot-keys-disagree", lambda t: ["memory", "inspect", _snapshot(t, _drop_a_question)],
     2, r"entries disagree on the number of keys"),
    ("snapshot-value-texts-disagree", lambda t: ["memory", "inspect", _snapshot(t, _drop_a_value_text)],
     2, r"key 0 counts \d+ values but has 0 value texts"),
]


@pytest.mark.parametrize("case, build, code, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_reported_and_nothing_is_written(case, build, code, pattern, tmp_path, capsys,
                                                      monkeypatch):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    run, cache = tmp_path / "run", tmp_path / "cache"
    monkeypatch.setenv("TMPDIR", str(tmp_path / "logs"))  # where the traceback goes
    (tmp_path / "logs").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    args = build(inputs)
    if args[0] == "train":
        args += [f"output_dir={run}", f"model.tiny.cache_dir={cache}", *TINY]
    before = _tree(inputs)

    assert main(args) == code

    err = capsys.readouterr().err
    assert re.search(pattern, err), err
    assert err.startswith("memrl: ") and "Traceback" not in err and len(err.splitlines()) <= 6
    assert _tree(inputs) == before  # inputs untouched (snapshots, data, configs)
    assert not run.exists()  # no run directory, no lock, no config.yaml
    assert not cache.exists() or not list(cache.rglob("*.lock"))
    if case not in ("config-not-utf8", "config-unknown-key"):  # config errors: one line only
        logs = list((tmp_path / "logs").glob("memrl-error-*.log"))
        assert len(logs) == 1 and "Traceback" in logs[0].read_text()
        assert f"full traceback: {logs[0]}" in err


def test_an_output_dir_that_cannot_be_written_is_bad_input(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permissions; not into a read-only filesystem
        target = Path("/sys/memrl-test-run")
        try:
            target.mkdir()
        except OSError:
            pass
        else:
            target.rmdir()
            pytest.skip("/sys is writable here: no read-only folder to test with")
    else:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o500)
        target = readonly / "run"
    assert main(["train", f"output_dir={target}", f"model.tiny.cache_dir={tmp_path / 'cache'}", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to the output directory {target}" in err, err
    assert "output_dir=PATH" in err and "looks like a bug" not in err and "Traceback" not in err


def test_debug_switch_prints_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEMRL_DEBUG", "1")
    args = ["train", *_data(tmp_path, b""), f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "no usable records" in err


@pytest.mark.parametrize("text, reason", [
    ("rollout:\n  num_workers: -1\n", r"num_workers = -1 is below 1"),
    ("rollout:\n  num_workers: 0\n", r"num_workers = 0 is below 1"),
    ("rollout:\n  num_workers: two\n", r"'two' is not a whole number"),
    ("rollout:\n  num_workers: 2.5\n", r"2\.5 is not a whole number"),
    ("rollout:\n  num_workers: true\n", r"True is not a whole number"),
    ("rollout: [1, 2]\n", r"no rollout\.num_workers"),
    ("num_workers: 3\n", r"no rollout\.num_workers"),
    ("rollout: {num_workers: 3\n", r"not valid YAML"),
])
def test_control_file_values_are_refused_with_the_reason(text, reason):
    wanted, problem = read_control(text)
    assert wanted is None and re.search(reason, problem), problem
    assert "expected 'rollout: {num_workers: N}'" in problem


def test_control_file_valid_value():
    assert read_control("rollout:\n  num_workers: 3\n") == (3, None)


def test_answer_checking_never_raises_and_is_bounded(caplog):
    huge = "9" * 5000  # over Python's 4300-digit int conversion limit
    preds = [huge, huge, "1" * (MAX_ANSWER_CHARS - 1), "\\frac{1}{2}"]
    golds = [huge, "9", "1" * (MAX_ANSWER_CHARS - 1), "0.5"]
    assert check_answers(preds, golds, mode="math") == [True, False, True, True]

    # A tower of powers costs math-verify its whole 5 s limit per item: six of them would take
    # 30 s; the batch budget stops at 2 s, in the worker process and in the main thread.
    slow = ["\\boxed{9^{9^{9^{9}}}}"] * 6
    out: dict = {}

    def work():
        started = time.monotonic()
        out["result"] = check_answers(slow, ["1"] * 6, mode="math", timeout_s=5.0,
                                      batch_timeout_s=2.0)
        out["elapsed"] = time.monotonic() - started

    with caplog.at_level(logging.WARNING, logger="memrl.verify"):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(timeout=120)
        started = time.monotonic()
        in_main = check_answers(slow[:3], ["1"] * 3, mode="math", timeout_s=5.0, batch_timeout_s=2.0)
        main_elapsed = time.monotonic() - started
    assert out["result"] == [False] * 6 and out["elapsed"] < 4.0
    assert in_main == [False] * 3 and main_elapsed < 4.0
    assert "remaining answers count as no match" in caplog.text


def test_phase_timeout_names_phase_step_actor_and_key():
    from ray.exceptions import GetTimeoutError

    from memrl.errors import phase

    with pytest.raises(PhaseTimeout) as info:
        with phase("scoring (rewards accuracy)", step=3, actor="the reward task", timeout_s=2):
            raise GetTimeoutError("Get timed out: some object(s) not ready.")
    message, code = explain(info.value)
    assert code == 1
    assert "timed out after 2 s waiting for scoring (rewards accuracy)" in message
    assert "phase 'scoring (rewards accuracy)', step 3, actor the reward task" in message
    assert "trainer.timeout_s" in message


def test_unknown_exception_gets_phase_note_and_exit_1():
    from memrl.errors import phase

    with pytest.raises(KeyError) as info:
        with phase("optimizer step", step=7):
            raise KeyError("boom")
    message, code = explain(info.value)
    assert code == 1 and "KeyError: 'boom'" in message
    assert "where: phase 'optimizer step', step 7" in message and "--debug" in message



# Errors that never reach a user: always caught and re-raised as a memrl error, or turned into a
# score, by the code beside them.
INTERNAL_ERRORS = {
    "memrl.tasks.files.RowError",  # rows_to_records re-raises it as DataError naming file and row
    "memrl.rewards.countdown.EquationError",  # equation_score turns it into a 0.0 reward
}


def _error_classes() -> list[type[Exception]]:
    """Every exception class defined in a module of memrl (memrl.actors included)."""
    import importlib
    import inspect
    import pkgutil

    import memrl
    import memrl.actors

    found = []
    for package in (memrl, memrl.actors):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            found += [obj for obj in vars(module).values()
                      if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name]
    return found


def test_every_error_reaching_a_user_is_an_input_error_or_a_runtime_fault_with_its_hint():
    from memrl.errors import EXIT_INPUT, EXIT_RUNTIME, InputError, MemrlError, RuntimeFault

    classes = [c for c in _error_classes() if c is not MemrlError]
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    assert INTERNAL_ERRORS <= names, "an internal error moved or was renamed: update INTERNAL_ERRORS"
    assert {"memrl.checkpoint.CheckpointError", "memrl.actors.learner.LearnerError"} <= names
    for cls in classes:
        if f"{cls.__module__}.{cls.__qualname__}" in INTERNAL_ERRORS:
            continue
        assert issubclass(cls, (InputError, RuntimeFault)), f"{cls.__qualname__}: subclass InputError or RuntimeFault"
        assert cls.exit_code == (EXIT_INPUT if issubclass(cls, InputError) else EXIT_RUNTIME)
        error = cls("something happened")
        assert str(error) == "something happened"  # callers quote it; the class's hint is explain()'s
        message, code = explain(error)
        assert code == cls.exit_code and "something happened" in message.splitlines()[0], cls
        if cls.hint is not None:
            assert message.endswith(f"  what to do: {cls.hint}"), cls
        else:
            assert "what to do" not in message, cls
        message, _ = explain(cls("something happened", where="here", hint="do this"))
        assert message.endswith("  where: here\n  what to do: do this"), cls


def test_errors_module_imports_nothing_from_memrl():
    """memrl.errors is the lowest layer: every other layer's errors build on it."""
    import ast

    import memrl.errors

    tree = ast.parse(Path(memrl.errors.__file__).read_text(encoding="utf-8"))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [("." * node.level) + (node.module or "") for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)]
    assert imported and not [m for m in imported if m.startswith((".", "memrl"))], imported


def test_an_error_that_does_not_say_where_gets_the_phase_and_keeps_its_hint():
    from memrl.errors import phase
    from memrl.rewards.registry import RewardError

    with pytest.raises(RewardError) as info:
        with phase("scoring (rewards accuracy)", step=2, actor="the reward task"):
            raise RewardError("reward 'accuracy' raised ZeroDivisionError")
    message, code = explain(info.value)
    assert code == 1 and message == (
        "reward failed: reward 'accuracy' raised ZeroDivisionError\n"
        "  where: phase 'scoring (rewards accuracy)', step 2, actor the reward task\n"
        f"  what to do: {RewardError.hint}")
