"""memrl eval: answer extraction and scoring, pass@k, and evaluate()/main_eval end to end."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from memrl.config import config_to_yaml, load_config
from memrl.eval.cli import main_eval
from memrl.eval.evaluate import evaluate
from memrl.eval.graders import grade, score_completions
from memrl.eval.pass_at_k import pass_at_k
from memrl.eval.results import format_table
from memrl.eval.settings import EvalSettings, EvalSettingsError, build_eval_task
from memrl.grading import extract_answers
from memrl.model.tiny import build_tiny_model
from memrl.prompts import SYSTEM_PROMPT
from memrl.rollout.engine import GenerationEngine, build_rollout_batch, load_tokenizer, pad_rows
from memrl.tasks import build_task, make_task
from memrl.types import Record

TEXTS = [
    SYSTEM_PROMPT,
    "Tom has 12 apples. He buys 7 more apples. How many apples does Tom have now?",
    "<reasoning>\nTom has 12 apples. He buys 7 more, so 12 + 7 = 19.\n</reasoning>\n"
    "<answer>\n19\n</answer>\n",
    "Mia has 30 coins. She gives 4 coins to Ann. How many coins does Mia have now?",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model", TEXTS, vocab_size=300, hidden_size=32,
        num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=512, seed=0,
    )


# -- scoring ---------------------------------------------------------------------------------

# (completion, gold, expected extracted answer, where it was found, correct)
PLANTED = [
    ("<reasoning>\n12 + 30 = 42\n</reasoning>\n<answer>\n42\n</answer>\n", "42", "42", "xml", True),
    ("We get $\\boxed{\\frac{1}{2}}$.", "0.5", "\\frac{1}{2}", "boxed", True),
    ("So 12 + 7 = 19. The answer is 19.", "19", "19", "free_text", True),
    ("<answer>\\frac{3}{4}</answer>", "0.75", "\\frac{3}{4}", "xml", True),
    ("<answer>$1,000</answer>", "1000", "$1,000", "xml", True),
    ("<reasoning>maybe 41</reasoning><answer>12 apples</answer>", "12", "12 apples", "xml", True),
    # the <answer> tag wins over a correct number in the reasoning
    ("<reasoning>The answer is 42.</reasoning>\n<answer>\n41\n</answer>", "42", "41", "xml", False),
    # \boxed{} wins over free text
    ("\\boxed{7} but maybe the answer is 8", "8", "7", "boxed", False),
    ("I do not know.", "5", None, "none", False),
    ("", "3", None, "none", False),
]


def test_planted_completions_score_six_of_ten():
    task = make_task("arith")
    records = [Record(id=f"r{i}", question="q", answer=p[1]) for i, p in enumerate(PLANTED)]
    scored = score_completions(task, records, [c for c, *_ in PLANTED])
    assert [s.extracted for s in scored] == [p[2] for p in PLANTED]
    assert [s.source for s in scored] == [p[3] for p in PLANTED]
    assert [s.correct for s in scored] == [p[4] for p in PLANTED]
    assert sum(s.correct for s in scored) / len(scored) == 0.6


def test_empty_answer_tag_falls_back_to_boxed():
    assert extract_answers(["<answer></answer> so \\boxed{3}"]) == [("3", "boxed")]


# A completion whose free-text parse takes math-verify ≈15 s (its cost grows with the sum's length).
PATHOLOGICAL = "The answer is $" + "+".join(["x"] * 40_000) + "$"


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "other-thread"])
def test_pathological_completion_cannot_raise_or_outlast_the_budget(in_thread):
    completions = [PATHOLOGICAL, "The answer is 19."] + [PATHOLOGICAL] * 6
    out: dict = {}

    def work():
        extract_answers(["The answer is 1."])  # starts the worker process off the main thread
        started = time.monotonic()
        out["found"] = extract_answers(completions, timeout_s=1.0, batch_timeout_s=2.5)
        out["seconds"] = time.monotonic() - started

    if in_thread:  # off the main thread math-verify's signal timeouts do not work
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(timeout=60)
    else:
        work()
    # 2.5 s budget + math-verify's whole-second alarm; unbounded: ~15 s a parse (1 s each per
    # item alone: 7 s).
    assert out["seconds"] < 5.0
    assert out["found"][0] == (None, "none") and out["found"][1] == ("19", "free_text")
    assert out["found"][2:] == [(None, "none")] * 6  # timed out, or past the 2.5 s batch budget


def test_countdown_uses_the_equation_check():
    task = make_task("countdown")
    record = Record(id="c", question="q", answer="24", meta={"numbers": [4, 6, 1], "target": 24})
    completions = [
        "<think>x</think><answer>4 * 6 * 1</answer>",  # every number once, = 24
        "<think>x</think><answer>4 * 6</answer>",  # = 24 but 1 unused
        "The answer is 24",  # no equation
    ]
    scored = score_completions(task, [record] * 3, completions)
    assert [s.correct for s in scored] == [True, False, False]
    assert [s.extracted for s in scored] == ["4 * 6 * 1", "4 * 6", None]
    assert [s.source for s in scored] == ["equation", "equation", "none"]


# -- pass@k ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 0, 1, 0.0),
        (5, 2, 1, 0.4),  # = c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 1, 4, 1.0),  # n - c < k: some draw always holds the correct one
        (4, 0, 4, 0.0),
    ],
)
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


# -- evaluate() with a scripted engine ---------------------------------------------------------


class ScriptedEngine(GenerationEngine):
    """Answers problem i right when greedy iff i is even; sample j right iff j < i % 4."""

    def __init__(self, model_path, golds):
        self._tokenizer = load_tokenizer(str(model_path))
        self.golds = golds  # record id -> (index, gold answer)
        self.calls = []

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def weight_version(self):
        return 0

    def load_weights(self, packed):
        raise NotImplementedError

    def generate(self, prompts, record_ids, settings, *, greedy=False):
        self.calls.append((list(prompts), settings, greedy))
        group = settings.num_generations
        texts = []
        for rid in record_ids:
            index, gold = self.golds[rid]
            for j in range(group):
                right = index % 2 == 0 if greedy else j < index % 4
                texts.append(f"<answer>\n{gold if right else int(gold) + 1}\n</answer>")
        ids = [self._tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        completion_ids, _ = pad_rows(ids, 0, side="right", dtype=torch.int64)
        prompt_ids, prompt_mask = pad_rows([[1]] * len(texts), 0, side="left", dtype=torch.int64)
        return build_rollout_batch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
            generated=_ragged_mask(ids, completion_ids.shape[1]),
            behaviour_logprobs=torch.zeros(completion_ids.shape), eos_ids=[0], pad_id=0,
            weight_version=0, tokenizer=self._tokenizer, record_ids=list(record_ids),
            num_generations=group,
        )


def _ragged_mask(rows, width):
    ones = [[1] * len(r) for r in rows]
    return pad_rows(ones, 0, side="right", dtype=torch.int64, width=width)[0]


def test_evaluate_counts_greedy_accuracy_and_pass_at_k(tiny_model):
    settings = EvalSettings(task="arith", limit=6, pass_k=3, temperature=0.7, top_p=0.9,
                            max_tokens=20, batch_size=4, seed=5)
    records = build_eval_task(settings).dataset("test")[:6]
    engine = ScriptedEngine(tiny_model, {r.id: (i, r.answer) for i, r in enumerate(records)})
    result = evaluate("scripted", settings, engine=engine)

    # greedy: problems 0, 2, 4 right
    assert [p.correct for p in result.problems] == [True, False, True, False, True, False]
    assert result.accuracy == 0.5 and result.num_correct == 3 and result.num_total == 6
    # samples right per problem: i % 4 = 0, 1, 2, 3, 0, 1 of 3 -> any right: 0, 1, 1, 1, 0, 1
    assert [p.num_correct_samples for p in result.problems] == [0, 1, 2, 3, 0, 1]
    assert result.pass_at_k == pytest.approx(4 / 6)
    assert result.sample_accuracy == pytest.approx(7 / 18)

    # batching: 4 greedy prompts a call; 4 // 3 = 1 prompt (3 completions) a sampling call
    greedy_calls = [c for c in engine.calls if c[2]]
    sample_calls = [c for c in engine.calls if not c[2]]
    assert [len(c[0]) for c in greedy_calls] == [4, 2]
    assert [len(c[0]) for c in sample_calls] == [1] * 6
    sampling = sample_calls[0][1]
    assert sampling.temperature == 0.7 and sampling.top_p == 0.9
    assert sampling.max_tokens == 20 and sampling.num_generations == 3
    # prompts are the training chat format: system prompt, then the question as the user turn
    first_prompt = greedy_calls[0][0][0]
    assert SYSTEM_PROMPT in first_prompt and records[0].question in first_prompt
    assert first_prompt.endswith("<|im_start|>assistant\n")

    data = result.to_json()
    assert data["pass_at_k"]["k"] == 3 and data["pass_at_k"]["value"] == pytest.approx(4 / 6)
    assert data["decoding"] == {"greedy": True, "pass_k": 3, "temperature": 0.7, "top_p": 0.9,
                                "max_tokens": 20, "seed": 5, "num_shots": 0, "batch_size": 4}
    assert [len(r["samples"]) for r in data["records"]] == [3] * 6
    table = format_table(result)
    assert "0.5000  (3/6)" in table and "pass@3" in table and "0.6667" in table


# -- end to end on the tiny model --------------------------------------------------------------


def test_main_eval_on_tiny_model_writes_consistent_json(tiny_model, capsys):
    rc = main_eval(model=str(tiny_model), task="arith", limit=8, max_tokens=8, pass_k=2,
                   batch_size=8, engine="hf", task_option=["max_value=20"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "accuracy (greedy)" in out and "pass@2" in out
    data = json.loads((tiny_model / "eval_arith_test.json").read_text())

    expected = make_task("arith", max_value=20).dataset("test")[:8]
    assert data["model"] == str(tiny_model) and data["engine"] == "hf"
    assert (data["task"], data["split"], data["num_total"]) == ("arith", "test", 8)
    assert data["task_options"] == {"max_value": 20}
    assert [r["id"] for r in data["records"]] == [r.id for r in expected]
    assert [r["gold"] for r in data["records"]] == [r.answer for r in expected]
    correct = [r["correct"] for r in data["records"]]
    assert data["num_correct"] == sum(correct)
    assert data["accuracy"] == sum(correct) / 8
    assert data["num_unparsed"] == sum(r["extracted"] is None for r in data["records"])
    for record in data["records"]:
        assert set(record) >= {"id", "question", "gold", "completion", "extracted", "correct"}
        assert 1 <= record["completion_tokens"] <= 8
        assert len(record["samples"]) == 2
        assert record["num_correct_samples"] == sum(s["correct"] for s in record["samples"])
    assert data["decoding"]["max_tokens"] == 8 and data["decoding"]["pass_k"] == 2

    # greedy decoding and seeded samples are reproducible
    again = evaluate(str(tiny_model), EvalSettings(task="arith", limit=8, max_tokens=8, pass_k=2,
                                                   batch_size=8, engine="hf",
                                                   task_options={"max_value": 20}))
    assert [p.completion for p in again.problems] == [r["completion"] for r in data["records"]]
    assert [[s.completion for s in p.samples] for p in again.problems] == [
        [s["completion"] for s in r["samples"]] for r in data["records"]]


def test_offline_hub_model_exits_2_with_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main_eval(model="SomeOrg/no-such-model", task="arith", limit=2) == 2
    err = capsys.readouterr().err
    assert "SomeOrg/no-such-model" in err and "HF_HUB_OFFLINE" in err
    assert not list(tmp_path.iterdir())  # no result written


def test_missing_local_folder_exits_2(capsys, tmp_path):
    assert main_eval(model=str(tmp_path / "nope"), task="arith") == 2
    assert "does not exist" in capsys.readouterr().err


# -- task options and local data ---------------------------------------------------------------


def test_task_options_reach_the_task():
    options = {"min_steps": 2, "max_steps": 2}
    task = build_eval_task(EvalSettings(task="arith", task_options=options))
    assert all(len(r.meta["steps"]) == 2 for r in task.dataset("test")[:5])


def test_bad_task_option_exits_2_naming_it(capsys, tiny_model):
    assert main_eval(model=str(tiny_model), task="arith", task_option=["max_stepz=2"]) == 2
    assert "max_stepz" in capsys.readouterr().err
    assert main_eval(model=str(tiny_model), task="arith", task_option=["seed=3"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_data_path_feeds_the_split(tmp_path):
    path = tmp_path / "probs.jsonl"
    path.write_text('{"q": "What is 2 + 3?", "a": "5"}\n{"q": "What is 4 - 1?", "a": "3"}\n')
    settings = EvalSettings(task="gsm8k", data_path=str(path), question_field="q",
                            answer_field="a", task_options={"plain_answers": True})
    records = build_eval_task(settings).dataset("test")
    assert [(r.question, r.answer) for r in records] == [
        ("What is 2 + 3?", "5"), ("What is 4 - 1?", "3")]


def test_settings_reject_bad_values():
    with pytest.raises(EvalSettingsError, match="--pass-k"):
        EvalSettings(task="arith", pass_k=0)
    with pytest.raises(EvalSettingsError, match="valid tasks"):
        EvalSettings(task="nope")
    with pytest.raises(EvalSettingsError, match="--num-shots"):
        build_eval_task(EvalSettings(task="countdown", num_shots=1))



# -- the two graders ---------------------------------------------------------------------------


def test_graders_differ_where_the_run_requires_the_answer_tag():
    task = make_task("arith")
    records = [Record(id=f"g{i}", question="q", answer="19") for i in range(3)]
    # No tag: the correctness reward compares the whole text (the official split semantics).
    completions = ["So 12 + 7 = 19. The answer is 19.",
                   "<answer>\n19\n</answer>",
                   "<answer>\n19.0\n</answer>"]  # equal as numbers, not as strings
    kwargs = dict(max_tokens=20, timeout_s=5.0)
    extractive = grade("extractive_match", task, records, completions, [5] * 3, verifier="exact",
                       **kwargs)
    exact = grade("correctness_reward", task, records, completions, [5] * 3, verifier="exact",
                  **kwargs)
    math = grade("correctness_reward", task, records, completions, [5] * 3, verifier="math",
                 **kwargs)
    assert [s.correct for s in extractive] == [True, True, True]
    assert [s.correct for s in exact] == [False, True, False]
    assert [s.correct for s in math] == [True, True, True]
    assert [s.extracted for s in exact] == [completions[0], "19", "19.0"]


# -- evaluation that remembers the run ---------------------------------------------------------


@pytest.fixture
def trained_run(tmp_path, tiny_model):
    """A run directory as training leaves it: config.yaml (arith up to 20, exact answers,
    100-token completions, eval_size 30) and the exported model folder."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, ["task.arith.max_value=20", "task.verifier=exact", "task.eval_size=30",
                             "task.seed=3", "grpo.max_completion_length=6", "seed=4"])
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    shutil.copytree(tiny_model, run / "model")
    return run, cfg


def test_eval_of_a_run_uses_its_task_settings_and_grader(trained_run, capsys):
    run, cfg = trained_run
    assert main_eval(model=str(run / "model"), task="arith", limit=5, batch_size=8,
                     engine="hf") == 0
    out = capsys.readouterr().out
    assert f"settings from run {run}" in out and "grader: correctness_reward, verifier exact" in out
    data = json.loads((run / "model" / "eval_arith_test.json").read_text())
    expected = build_task(cfg).dataset("test")[:5]  # the run's own held-out problems
    builtin = make_task("arith").dataset("test")[:5]
    assert [r["id"] for r in data["records"]] == [r.id for r in expected]
    assert [r["question"] for r in data["records"]] == [r.question for r in expected]
    assert [r.question for r in expected] != [r.question for r in builtin]
    assert (data["grader"], data["verifier"]) == ("correctness_reward", "exact")
    assert data["decoding"]["max_tokens"] == 6 and data["decoding"]["seed"] == 4
    assert data["run"]["run_dir"] == str(run)
    assert set(data["run"]["taken_from_run"]) == {"num_shots", "seed", "max_tokens", "grader",
                                                  "verifier"}
    assert all(r["completion_tokens"] <= 6 for r in data["records"])


def test_eval_of_a_run_dir_and_what_the_command_line_overrides(trained_run, capsys):
    run, _ = trained_run
    assert main_eval(model=str(run), limit=3, max_tokens=4, grader="extractive_match",
                     engine="hf", run_override=["task.arith.max_value=50"]) == 0
    data = json.loads((run / "model" / "eval_arith_test.json").read_text())
    assert data["model"] == str(run / "model") and data["grader"] == "extractive_match"
    assert data["decoding"]["max_tokens"] == 4
    assert set(data["run"]["taken_from_run"]) == {"num_shots", "seed", "verifier"}
    cfg50 = load_config(run / "config.yaml", ["task.arith.max_value=50"])
    assert [r["id"] for r in data["records"]] == [r.id for r in build_task(cfg50).dataset("test")[:3]]


def test_eval_of_a_run_ignore_run_and_contradictions(trained_run, capsys):
    run, _ = trained_run
    assert main_eval(model=str(run / "model"), task="arith", limit=2, max_tokens=4, engine="hf",
                     ignore_run=True) == 0
    data = json.loads((run / "model" / "eval_arith_test.json").read_text())
    assert data["run"] is None and data["grader"] == "extractive_match"
    assert [r["id"] for r in data["records"]] == [r.id for r in make_task("arith").dataset("test")[:2]]
    capsys.readouterr()
    assert main_eval(model=str(run), task="gsm8k", limit=2) == 2
    assert "trained on 'arith'" in capsys.readouterr().err
    assert main_eval(model=str(run), task_option=["max_value=9"]) == 2
    err = capsys.readouterr().err
    assert "--task-option" in err and "--run-override" in err
    assert main_eval(model=str(run), run_override=["task.arith.max_valu=9"]) == 2
    assert "max_valu" in capsys.readouterr().err


def test_eval_of_a_broken_run_names_the_run_the_folder_and_what_is_wrong(trained_run, capsys):
    run, _ = trained_run
    weights = run / "model" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # an export cut short
    assert main_eval(model=str(run), limit=2, engine="hf") == 2
    err = capsys.readouterr().err
    assert f"memrl eval: run {run}: " in err and f"{weights} is cut short" in err, err
    weights.write_bytes(whole)
    (run / "model" / "tokenizer.json").unlink()
    assert main_eval(model=str(run / "model"), limit=2, engine="hf") == 2
    err = capsys.readouterr().err
    assert f"run {run}: " in err and f"the folder {run / 'model'} has no tokenizer" in err, err
    shutil.rmtree(run / "model")
    assert main_eval(model=str(run), limit=2, engine="hf") == 2
    err = capsys.readouterr().err
    assert f"run {run} has no model folder {run / 'model'}" in err and "--task is required" not in err


def test_eval_into_a_folder_it_cannot_write_writes_here_or_says_where_to(trained_run, capsys, monkeypatch,
                                                                         tmp_path):
    from memrl.eval import results

    run, _ = trained_run
    write = results.write_result

    def read_only_model_folder(result, path):
        if Path(path).parent == run / "model" or Path(path).parent == tmp_path / "readonly":
            raise OSError(30, "Read-only file system")
        return write(result, path)

    monkeypatch.setattr(results, "write_result", read_only_model_folder)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main_eval(model=str(run), limit=2, max_tokens=4, engine="hf") == 0
    out = capsys.readouterr().out
    assert f"could not write {run / 'model' / 'eval_arith_test.json'} (Read-only file system); wrote the " \
        "result here instead" in out
    assert f"wrote {here / 'eval_arith_test.json'}" in out and (here / "eval_arith_test.json").is_file()
    assert main_eval(model=str(run), limit=2, max_tokens=4, engine="hf",
                     out=str(tmp_path / "readonly" / "result.json")) == 2
    err = capsys.readouterr().err
    assert "could not write the result: " in err and "result.json (Read-only file system)" in err
    assert "pass --out FILE in a folder you can write" in err


def test_task_is_required_without_a_run(tiny_model, capsys):
    assert main_eval(model=str(tiny_model)) == 2
    assert "--task is required" in capsys.readouterr().err
