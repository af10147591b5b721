"""Tasks: the arith generator, local-file loading, the hub fallback and the registry."""

import json
import pickle
import re
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.shared_data import gsm8k_file, missing_reason
from memrl.tasks import TASKS, make_task
from memrl.tasks.aimo import last_boxed_content
from memrl.tasks.arith import NAMES, OBJECTS, apply_operation
from memrl.tasks.base import GeneratedRecords, held_out
from memrl.tasks.files import load_records_file
from memrl.tasks.hub import DatasetUnavailableError, load_hub_split, unreachable_reason
from memrl.types import Record

GSM8K_TEST = gsm8k_file("test")
needs_gsm8k = pytest.mark.skipif(not GSM8K_TEST.is_file(), reason=missing_reason(GSM8K_TEST))


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- arith


def test_arith_is_deterministic_per_seed():
    a = make_task("arith", seed=0).dataset("train")
    b = make_task("arith", seed=0).dataset("train")
    c = make_task("arith", seed=1).dataset("train")
    assert a[:100] == b[:100]
    assert a[17] == b[17] and a[17].id == "arith:0:train:17"
    same = sum(x.question == y.question for x, y in zip(a[:100], c[:100]))
    assert same < 5


def test_arith_answers_recompute_from_meta():
    task = make_task("arith", min_steps=1, max_steps=4, operations=("+", "-", "*", "/"), seed=5)
    for record in task.dataset("train")[:300]:
        value = record.meta["start"]
        for op, operand in record.meta["steps"]:
            value = apply_operation(value, op, operand)
        assert record.answer == str(value) and value >= 1
        assert record.meta["solution"].endswith(f"= {value}.")
        assert record.question.startswith(record.meta["solution"].split(".")[0] + ".")
        assert record.question.endswith("have now?")


def test_arith_solution_reads_like_gsm8k():
    task = make_task("arith", seed=0)
    record = next(r for r in task.dataset("train")[:50] if r.meta["steps"][0][0] == "+")
    start, (_, b) = record.meta["start"], record.meta["steps"][0]
    name = record.question.split()[0]
    assert re.fullmatch(
        rf"{name} has {start} \w+\. (He|She) \w+ {b} more, so {start} \+ {b} = {start + b}\.",
        record.meta["solution"],
    )


def test_arith_difficulty_sets_step_count_and_value_range():
    easy = make_task("arith", min_steps=1, max_steps=1, max_value=50).dataset("train")[:200]
    hard = make_task("arith", min_steps=3, max_steps=3, operations=("+", "-", "*", "/"))
    assert all(len(r.meta["steps"]) == 1 for r in easy)
    assert all(r.meta["steps"][0][0] in "+-" for r in easy)
    assert all(2 <= r.meta["start"] <= 50 and r.meta["steps"][0][1] <= 50 for r in easy)
    hard_records = hard.dataset("train")[:200]
    assert all(len(r.meta["steps"]) == 3 for r in hard_records)
    assert all(r.meta["solution"].count(" = ") == 3 for r in hard_records)
    assert {op for r in hard_records for op, _ in r.meta["steps"]} == {"+", "-", "*", "/"}


def test_arith_train_and_test_do_not_overlap():
    task = make_task("arith", eval_size=300)
    train = {r.question for r in task.dataset("train")[:5000]}
    test = [r.question for r in task.dataset("test")]
    assert len(test) == 300 and len(set(test)) > 250
    assert not train & set(test)
    assert all(held_out(q) for q in test) and not any(held_out(q) for q in train)


def test_arith_vocabulary_is_small():
    task = make_task("arith", min_steps=1, max_steps=3, operations=("+", "-", "*", "/"))
    words = {w for r in task.dataset("train")[:2000]
             for w in re.findall(r"[A-Za-z]+", r.question + " " + r.meta["solution"])}
    assert words >= {n for n, _ in NAMES} | set(OBJECTS)
    assert len(words) < 60, sorted(words)


def test_arith_split_is_lazy_and_indexable():
    records = make_task("arith", train_size=10**9).dataset("train")
    assert len(records) == 10**9
    assert records[-1].id == "arith:0:train:999999999"
    assert [r.id for r in records[3:6]] == [f"arith:0:train:{i}" for i in (3, 4, 5)]
    with pytest.raises(IndexError):
        records[10**9]


def test_arith_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_steps"):
        make_task("arith", min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match=r"operations \['\^'\]"):
        make_task("arith", operations=("^",))
    with pytest.raises(ValueError, match="no split 'validation'"):
        make_task("arith").dataset("validation")


def test_generated_splits_pickle():
    for name in ("arith", "countdown"):
        records = make_task(name, seed=4).dataset("train")
        copy = pickle.loads(pickle.dumps(records))
        assert len(copy) == len(records) and copy[123] == records[123]


def test_generated_records_sequence():
    seq = GeneratedRecords(3, lambda i: Record(id=str(i), question="q", answer=str(i * i)))
    assert [r.answer for r in seq] == ["0", "1", "4"] and seq[-1].id == "2"
    assert len(seq[::2]) == 2


# ---------------------------------------------------------------- local files


def test_jsonl_loading_with_ids_and_parser(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [
        {"question": "What is 2+2?", "answer": "so 4\n#### 4"},
        "",  # blank line: skipped but counted
        {"question": "What is 3+3?", "answer": "#### 6"},
    ])
    records = load_records_file(path, answer_parser=lambda s: s.split("####")[1].strip())
    assert [(r.id, r.answer) for r in records] == [("mine:1", "4"), ("mine:3", "6")]
    with_ids = _write_jsonl(tmp_path / "ids.jsonl", [
        {"q": "a?", "a": 1, "uid": "x"}, {"q": "b?", "a": "2", "uid": "y"}])
    records = load_records_file(with_ids, question_field="q", answer_field="a", id_field="uid")
    assert [(r.id, r.question, r.answer) for r in records] == [("x", "a?", "1"), ("y", "b?", "2")]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"question": "a?", "answer": "1"}, {"question": "b?"}],
         r"line 2: missing field 'answer'"),
        ([{"question": "a?", "answer": "1"}, {"question": 7, "answer": "1"}],
         r"line 2: field 'question' must be a string, got int"),
        ([{"question": "   ", "answer": "1"}], r"line 1: field 'question' is empty"),
        ([{"question": "a?", "answer": ""}], r"line 1: field 'answer' gives an empty answer"),
        ([{"question": "a?", "answer": "1"}, "", '{"question": "b?", "answer": '],
         r"line 3: malformed JSON"),
        (["[1, 2]"], r"line 1: expected a JSON object, got list"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ", " + message):
        load_records_file(path)


def test_missing_file_and_duplicate_ids(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_records_file(tmp_path / "nowhere.jsonl")
    dup = _write_jsonl(tmp_path / "dup.jsonl", [
        {"question": "a?", "answer": "1", "id": "k"}, {"question": "b?", "answer": "2", "id": "k"}])
    with pytest.raises(ValueError, match="duplicate record id 'k'"):
        load_records_file(dup, id_field="id")


def test_parquet_loading_and_row_errors(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"problem": ["a?", "b?"], "answer": ["1", "2"]}), good)
    records = load_records_file(good, question_field="problem")
    assert [(r.id, r.question, r.answer) for r in records] == [
        ("good:1", "a?", "1"), ("good:2", "b?", "2")
    ]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["a?", None, "c?"], "answer": ["1", "2", "3"]}), bad)
    with pytest.raises(
        ValueError, match=r"bad\.parquet, row 2: field 'question' must be a string, got NoneType"
    ):
        load_records_file(bad)
    with pytest.raises(ValueError, match=r"good\.parquet, row 1: missing field 'question'"):
        load_records_file(good)


@needs_gsm8k
def test_gsm8k_from_the_real_local_test_file():
    task = make_task("gsm8k", eval_path=str(GSM8K_TEST))
    records = task.dataset("test")
    assert len(records) == 1319
    first = records[0]
    assert first.id == "test:1" and first.question.startswith("Janet")
    assert first.answer == "18"  # "... every day at the farmer's market.\n#### 18"
    assert first.meta["solution"].endswith("#### 18")
    assert all("####" not in r.answer and r.answer for r in records)
    assert task.rule_rewards == (
        "xmlcount", "soft_format", "strict_format", "integer", "correctness"
    )
    assert task.correctness_reward == "correctness" and len(task.exemplars) == 9


def test_gsm8k_file_without_hashes_and_plain_answers(tmp_path):
    path = _write_jsonl(tmp_path / "plain.jsonl", [{"question": "a?", "answer": "42"}])
    with pytest.raises(ValueError, match=r"plain\.jsonl, line 1: the answer has no '####"):
        make_task("gsm8k", path=str(path)).dataset("train")
    records = make_task("gsm8k", path=str(path), plain_answers=True).dataset("train")
    assert records[0].answer == "42" and records[0].meta == {}


@needs_gsm8k
def test_size_takes_a_seeded_subset_in_source_order():
    a = make_task("gsm8k", eval_path=str(GSM8K_TEST), eval_size=200, seed=0).dataset("test")
    b = make_task("gsm8k", eval_path=str(GSM8K_TEST), eval_size=200, seed=0).dataset("test")
    c = make_task("gsm8k", eval_path=str(GSM8K_TEST), eval_size=200, seed=1).dataset("test")
    rows = [int(r.id.split(":")[1]) for r in a]
    assert len(a) == 200 and rows == sorted(rows) and a == b
    assert [r.id for r in a] != [r.id for r in c]


def test_aimo_answers_come_from_the_last_boxed(tmp_path):
    assert last_boxed_content(r"so \boxed{3} or rather \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed_content(r"\boxed {x^{2}}") == "x^{2}"
    assert last_boxed_content("no box") is None
    assert last_boxed_content(r"\boxed{unclosed") is None
    path = _write_jsonl(tmp_path / "numina.jsonl", [
        {"problem": "p1", "solution": r"work \boxed{7}"},
        {"problem": "p2", "solution": "no final answer"},  # skipped
        {"problem": "p3", "solution": r"\boxed{\sqrt{2}}"},
    ])
    task = make_task("aimo", path=str(path))
    records = task.dataset("train")
    assert [(r.id, r.answer) for r in records] == [("numina:1", "7"), ("numina:3", r"\sqrt{2}")]
    assert "integer" not in task.rule_rewards and task.correctness_reward == "correctness"


def test_evaluation_only_tasks(tmp_path):
    path = _write_jsonl(
        tmp_path / "m.jsonl", [{"problem": "x?", "answer": r"\frac12", "unique_id": "u1"}]
    )
    records = make_task("math500", eval_path=str(path), id_field="unique_id").dataset("test")
    assert [(r.id, r.question, r.answer) for r in records] == [("u1", "x?", r"\frac12")]
    for name in ("math500", "aime24"):
        assert TASKS[name].splits == ("test",)
        with pytest.raises(ValueError, match="data.eval_path"):
            make_task(name, path=str(path))
    aime = _write_jsonl(tmp_path / "aime.jsonl", [{"problem": "p", "answer": 204}])
    assert make_task("aime24", eval_path=str(aime)).dataset("test")[0].answer == "204"


# ---------------------------------------------------------------- hub and registry


def test_offline_hub_fails_fast_with_a_local_file_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets  # imported before timing: the import alone takes seconds

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as caught:
        make_task("gsm8k").dataset("train")
    assert time.perf_counter() - start < 5.0
    message = str(caught.value)
    assert "openai/gsm8k" in message and "data.path=" in message and "'question'" in message
    with pytest.raises(DatasetUnavailableError, match="data.eval_path="):
        make_task("gsm8k").dataset("test")


def test_unreachable_hub_fails_fast_without_offline_mode(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("memrl.tasks.hub._hub_endpoint", lambda: "https://hub.invalid")
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match="hub.invalid cannot be reached") as caught:
        load_hub_split("AI-MO/NuminaMath-TIR", "train", probe_timeout_s=3.0)
    assert time.perf_counter() - start < 5.0
    assert "HF_HUB_OFFLINE=1" in str(caught.value) and "data.path=" in str(caught.value)


def test_probe_gives_up_on_a_silent_endpoint():
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        start = time.perf_counter()
        reason = unreachable_reason(f"http://127.0.0.1:{port}", 0.5)
        assert time.perf_counter() - start < 2.0
    assert reason is not None and f"127.0.0.1:{port}" in reason


def test_registry():
    assert set(TASKS) == {"arith", "gsm8k", "aimo", "math500", "aime24", "countdown"}
    assert all(name == cls.name for name, cls in TASKS.items())
    with pytest.raises(ValueError, match="unknown task 'gsm9k'; valid tasks: aime24, aimo, arith"):
        make_task("gsm9k")
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_steps'"):
        make_task("countdown", max_steps=3)


def test_direct_answers_are_told_from_worked_ones():
    from memrl.tasks.base import is_direct_answer

    task = make_task("arith", seed=0)
    record = task.dataset("train")[0]
    assert is_direct_answer(task.demonstration(record, direct=True))
    assert not is_direct_answer(task.demonstration(record))
    assert is_direct_answer("The answer is 7.")  # no tags: the whole text is the reasoning
    assert not is_direct_answer("<reasoning>\nSam has 3. The answer is 7.\n</reasoning>")
    assert not is_direct_answer("<reasoning>\n\n</reasoning>\n<answer>\n7\n</answer>\n")
