"""Answer extraction, number normalisation and answer checking (memrl.verify)."""

import logging
import os
import threading
import time

import pytest

from memrl.verify import (
    VerifyWorker,
    check_answers,
    extract_boxed,
    extract_xml_answer,
    extract_xml_reasoning,
    normalize_number,
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("<reasoning>\nr\n</reasoning>\n<answer>\n 42 \n</answer>\n", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # last <answer>
        ("<answer>\n7\n", "7"),  # no closing tag: rest of the text
        ("no tags at all ", "no tags at all"),  # no tags: whole text
        ("x</answer>y", "x"),  # only a closing tag: text before it
        ("<answer><answer>in</answer>", "in"),
        ("<answer></answer>", ""),
        ("", ""),
    ],
)
def test_extract_xml_answer_follows_split(text, answer):
    assert extract_xml_answer(text) == answer


def test_extract_xml_reasoning():
    text = "<reasoning>\nfirst\n</reasoning><reasoning> second </reasoning>\n<answer>\n1\n</answer>"
    assert extract_xml_reasoning(text) == "second"
    assert extract_xml_reasoning("just text\n") == "just text"
    assert extract_xml_reasoning("<reasoning>\nopen only") == "open only"


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("so \\boxed{12}.", "12"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{a\\boxed{b}}", "a\\boxed{b}"),  # last top-level box
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are literals
        ("\\fbox{3}", "3"),
        ("\\boxed {4}", "4"),
        ("\\boxed{}", ""),
        ("\\boxed{1} and \\boxed{2", None),  # last box never closed
        ("no box", None),
        ("", None),
    ],
)
def test_extract_boxed(text, content):
    assert extract_boxed(text) == content


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("1,000.0", "1000"),
        ("$12", "12"),
        ("\\$12", "12"),
        ("$1,234.50", "1234.5"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("12.", "12"),
        ("+7", "7"),
        ("-0.0", "0"),
        (" 007 ", "7"),
        ("3/4", "0.75"),
        ("-2/4", "-0.5"),
        ("1/3", "1/3"),
        ("-7/6", "-7/6"),
        ("50%", "50"),
        ("10\\%", "10"),
        ("0.125", "0.125"),
        ("1,2", None),  # not a thousands grouping
        ("12,34.5", None),
        ("1e3", None),
        ("6/0", None),
        ("12 apples", None),
        ("abc", None),
        (".", None),
        ("", None),
    ],
)
def test_normalize_number(raw, canonical):
    assert normalize_number(raw) == canonical


def test_exact_mode_is_stripped_string_equality():
    assert check_answers([" 72 ", "72.0", "1/2"], ["72", "72", "0.5"], mode="exact") == [
        True,
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("pred", "gold", "match"),
    [
        ("1,000", "1000", True),  # numeric fast path
        ("0.50", "1/2", True),
        ("13", "12", False),
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\boxed{12}", "12", True),
        ("\\dfrac12", "\\frac{1}{2}", True),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
        ("1+x^2", "x^2+1", True),
        ("3, 5", "5", False),  # a bare answer is one expression, not "its last number"
        ("12 dollars", "12", True),  # free text with words
        ("x = 3", "3", True),
        ("", "12", False),
        ("\\frac{1}{3}", "0.33", False),
    ],
)
def test_math_mode(pred, gold, match):
    assert check_answers([pred], [gold], mode="math") == [match]


def test_unparseable_gold_is_no_match_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="memrl.verify"):
        assert check_answers(["1"], ["$$"], mode="math") == [False]
    assert "could not be parsed" in caplog.text


def test_check_answers_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        check_answers(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="unknown answer check mode 'fuzzy'"):
        check_answers(["1"], ["1"], mode="fuzzy")
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        check_answers(["1"], ["1"], timeout_s=0)


def test_math_mode_outside_the_main_thread():
    preds = ["\\frac{1}{2}", "\\boxed{12}", "13", "1,000", "1+x^2"]
    golds = ["0.5", "12", "12", "1000", "x^2+1"]
    out: dict = {}

    def work():
        try:
            out["result"] = check_answers(preds, golds, mode="math", timeout_s=20.0)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            out["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert "error" not in out, out.get("error")
    assert out["result"] == [True, True, False, True, True]


def _scripted_compare(pred: str, gold: str) -> tuple[bool, str | None]:
    """Test comparison: sleeps ``pred`` seconds, or kills the worker when pred is "exit"."""
    if pred == "exit":
        os._exit(3)
    time.sleep(float(pred))
    return pred == "0", None


def test_worker_times_out_and_survives_crashes(caplog):
    worker = VerifyWorker(compare=_scripted_compare)
    try:
        pairs = [("0", "g"), ("30", "g"), ("0", "g"), ("exit", "g"), ("0", "g")]
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="memrl.verify"):
            result = worker.run(pairs, timeout_s=1.0)
        elapsed = time.monotonic() - started
    finally:
        worker.close()
    assert result == [True, False, True, False, True]
    assert elapsed < 25.0  # the 30 s item was cut off
    assert "took over 1.0 s" in caplog.text
    assert "crashed the math-verify worker" in caplog.text
