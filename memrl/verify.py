"""Answer extraction and answer checking (exact string match or math-verify equivalence).

Extraction of a free-text answer (:func:`extract_free_text_answers`) uses math-verify too and
is bounded the same way as checking (below).

Extraction follows the Memory-R+ format (``<reasoning>…</reasoning><answer>…</answer>``) with
Python ``split`` semantics, plus the last top-level ``\\boxed{}``.

Checking has two modes:

- ``"exact"``: the stripped strings are equal (the paper's GSM8K correctness);
- ``"math"``: both sides are numbers (:func:`normalize_number`) and equal exactly, or else
  math-verify finds them equivalent (LaTeX, fractions, ``\\boxed{}``, sets, …).

math-verify bounds its own run time with ``signal.alarm``, which only works in the main thread
and even there does not interrupt every long call. So from every thread the work goes to one
long-lived worker process with math-verify's timeouts off; the caller waits at most
``timeout_s`` per item and kills and restarts the worker when an item overruns. A timed-out or
unparseable item counts as "no match" and is logged; it never raises.

Checking is bounded per answer *and* per batch, whatever the text: answers longer than
``MAX_ANSWER_CHARS`` are compared as stripped strings only (no number or LaTeX parsing, whose
cost grows with the text, and whose integer conversion refuses more than 4300 digits), each
math-verify item gets at most ``timeout_s``, and a batch stops calling math-verify once
``batch_timeout_s`` is spent (the remaining items count as no match, with one warning).
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Literal

from math_verify import parse, verify

logger = logging.getLogger(__name__)

CheckMode = Literal["exact", "math"]
CHECK_MODES: tuple[str, ...] = ("exact", "math")
# Longer answers are compared as strings only: gold answers are short, and parsing cost (and
# Python's int-from-digits limit) grows with the text.
MAX_ANSWER_CHARS = 1000
# Default per-batch budget of math-verify: a base plus a little per item, far above the tens of
# milliseconds a normal answer takes, far below timeout_s per item for a batch of bad ones.
BATCH_BASE_S = 30.0
BATCH_PER_ITEM_S = 0.5

# --------------------------------------------------------------------------------------------
# Extraction


def extract_xml_answer(text: str) -> str:
    """Text between the last ``<answer>`` and the next ``</answer>``, stripped.

    A missing tag keeps the whole remaining text, exactly as
    ``text.split("<answer>")[-1].split("</answer>")[0].strip()``.
    """
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def extract_xml_reasoning(text: str) -> str:
    """Text between the last ``<reasoning>`` and the next ``</reasoning>``, stripped.

    Same ``split`` semantics as :func:`extract_xml_answer`.
    """
    return text.split("<reasoning>")[-1].split("</reasoning>")[0].strip()


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the group that starts just before ``start``, or None.

    ``\\{`` and ``\\}`` are LaTeX literals, not grouping braces, so they are skipped.
    """
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{…}`` or ``\\fbox{…}``, braces balanced.

    Boxes nested inside another box are part of the outer content. None when there is no box,
    or when the last box is never closed (a truncated generation: its answer is incomplete).
    """
    content: str | None = None
    pos = 0
    while (match := _BOX_OPEN.search(text, pos)) is not None:
        end = _closing_brace(text, match.end())
        if end is None:
            return None
        content = text[match.end() : end]
        pos = end + 1
    return content


# --------------------------------------------------------------------------------------------
# Numbers

_DECIMAL = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+)?(?:\.(\d*))?")
_FRACTION = re.compile(r"([+-]?)(\d+)\s*/\s*(\d+)")


def _parse_number(text: str) -> Fraction | None:
    """The exact rational value of a plain number string, or None (see normalize_number)."""
    s = text.strip().replace("\\$", "").replace("$", "").strip()
    # A percentage keeps its number: GSM8K writes the gold of "what percent…" as the bare number.
    for percent in ("\\%", "%"):
        if s.endswith(percent):
            s = s[: -len(percent)].rstrip()
            break
    if (m := _FRACTION.fullmatch(s)) is not None:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign == "-" else value
    m = _DECIMAL.fullmatch(s)
    if m is None:
        return None
    sign, whole, frac = m.groups()
    if not whole and not frac:  # "", "+", ".", "-." carry no digit
        return None
    value = Fraction(f"{(whole or '0').replace(',', '')}.{frac or '0'}")
    return -value if sign == "-" else value


def _canonical(value: Fraction) -> str:
    """Unique string of a rational: integer, terminating decimal, or ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    # Lowest terms and the smallest power of ten: the scaled numerator has no trailing zero.
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def normalize_number(s: str) -> str | None:
    """Canonical string of ``s`` if it is a plain number, else None.

    Accepted: optional sign, digits with optional thousands commas (``1,000``; commas elsewhere
    make it not a number), optional decimal part (``12.`` is 12), or a fraction ``p/q``;
    surrounding spaces, ``$`` / ``\\$`` (currency or LaTeX math delimiters) and one trailing
    ``%`` / ``\\%`` are ignored (``50%`` is 50, not 0.5). Scientific notation and units are not
    numbers here (math-verify handles them).

    The result is unique per rational value: an integer (``"1000"``), else a terminating decimal
    without trailing zeros (``"0.5"``, ``"0.75"`` also for ``"3/4"``), else ``"p/q"``
    (``"1/3"``). Two strings denote the same number exactly when their canonical forms match.
    """
    value = _parse_number(s)
    return None if value is None else _canonical(value)


# --------------------------------------------------------------------------------------------
# math-verify

_ANCHORS = ("$", "\\boxed", "\\fbox", "\\(", "\\[")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")


def _parse(text: str) -> list:
    """math-verify's parse with its own (signal-based) timeout off, the module doc says why.
    None is the off that math-verify documents, though it annotates parsing_timeout as int."""
    return parse(text, parsing_timeout=None)  # pyright: ignore[reportArgumentType]


def _parse_math(text: str) -> list:
    """math-verify parse of one answer string; [] when nothing parses.

    math-verify reads LaTeX only between anchors (``$…$``, ``\\boxed{}``) and otherwise picks
    numbers out of free text, so a bare answer such as ``1+x^2`` or ``3, 5`` would parse as its
    first or last number. Answer strings are therefore read as one math expression (wrapped in
    ``$…$``) unless they are anchored already or contain a word of three or more letters outside
    LaTeX commands (``12 dollars``, ``The answer is 12``), which are parsed as free text, and as
    one expression only if that finds nothing (``xyz+1``).
    """
    if not text.strip():
        return []
    if any(anchor in text for anchor in _ANCHORS):
        return _parse(text)
    if _WORD.search(_LATEX_COMMAND.sub(" ", text)) is not None:
        parsed = _parse(text)
        if parsed:
            return parsed
    return _parse(f"${text}$")


def _math_verify_match(pred: str, gold: str) -> tuple[bool, str | None]:
    """Whether math-verify finds ``pred`` equivalent to ``gold``, and a problem to log (or None)."""
    gold_parsed = _parse_math(gold)
    if not gold_parsed:
        return False, f"gold answer {gold!r} could not be parsed by math-verify"
    pred_parsed = _parse_math(pred)
    if not pred_parsed:
        logger.debug("prediction %r could not be parsed by math-verify", pred)
        return False, None
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None)), None


def _free_text_answer(text: str) -> tuple[str | None, str | None]:
    """The answer math-verify extracts from free text (its first matched string), or None; no
    problem to log."""
    parsed = _parse(text)
    return next((item for item in parsed if isinstance(item, str) and item.strip()), None), None


# The math-verify work a caller can bound, run in the worker process with math-verify's own
# (signal-based) timeouts off, since the caller enforces the limit: name -> fn(*args) ->
# (result, problem).
_BOUNDED_JOBS: dict[str, Callable[..., tuple[object, str | None]]] = {
    "match": _math_verify_match,
    "extract": _free_text_answer,
}


def _job_without_timeout(kind: str, *args: str) -> tuple[object, str | None]:
    """Worker-side job ``kind`` (see :data:`_BOUNDED_JOBS`)."""
    return _BOUNDED_JOBS[kind](*args)


# One item's job in the worker: (result, problem to log or None) from the item's arguments.
Job = Callable[..., tuple[object, "str | None"]]


def _worker_main(conn: Connection, job: Job) -> None:
    """Worker process loop: receive a list of argument tuples, send (index, result, problem)."""
    # Timeouts are off on purpose here; math-verify's warning about that is noise.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send("ready")
    while True:
        try:
            items = conn.recv()
        except EOFError:
            return
        for i, args in enumerate(items):
            try:
                result, problem = job(*args)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, item = default
                result, problem = None, f"{type(exc).__name__}: {exc}"
            conn.send((i, result, problem))


class VerifyWorker:
    """One spawned process that runs ``compare(*item)`` on batches of argument tuples.

    ``compare`` must be a module-level function (it is pickled into the spawned process) that
    returns ``(result, problem)``; the default runs the bounded math-verify jobs on
    ``(kind, *args)`` items (``("match", pred, gold)``, ``("extract", text)``). The process
    starts on first use and is restarted after an item overruns its time limit or the process
    dies. Not thread-safe: callers hold a lock.
    """

    def __init__(self, compare: Job = _job_without_timeout, startup_timeout_s: float = 120.0):
        self._compare = compare
        self._startup_timeout_s = startup_timeout_s
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        # spawn, not fork: the caller may be a threaded process (Ray actor), where fork can
        # copy a held lock into the child and deadlock it.
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        process = ctx.Process(
            target=_worker_main, args=(child_conn, self._compare), name="memrl-verify", daemon=True
        )
        process.start()
        child_conn.close()
        self._process, self._conn = process, parent_conn
        if not parent_conn.poll(self._startup_timeout_s):
            self.close()
            raise RuntimeError(
                f"the math-verify worker process did not start within {self._startup_timeout_s} s"
            )
        try:
            parent_conn.recv()
        except EOFError:
            process.join()
            self.close()
            raise RuntimeError(
                f"the math-verify worker process exited while starting (exit code "
                f"{process.exitcode}); its stderr shows why"
            ) from None
        return parent_conn

    def close(self) -> None:
        """Kill the worker process (a later call starts a fresh one)."""
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def run(self, items: Sequence[tuple], timeout_s: float, deadline: float | None = None,
            default: object = False) -> list:
        """``compare(*item)``'s result for each item; an item taking over ``timeout_s`` seconds,
        failing, or not done by ``deadline`` (a ``time.monotonic()`` value) gets ``default``."""
        results = [default] * len(items)
        start = 0
        while start < len(items):
            if _out_of_time(deadline, len(items) - start):
                self.close()  # it may still be busy with the batch
                break
            if self._process is not None and not self._process.is_alive():
                self.close()  # died between calls (killed from outside)
            conn = self._conn or self._start()
            conn.send(list(items[start:]))
            done = start
            while done < len(items):
                failure = None
                reply: tuple[int, object, str | None] | None = None  # (index, result, problem)
                wait_s = timeout_s if deadline is None else min(timeout_s, deadline - time.monotonic())
                if not conn.poll(max(0.0, wait_s)):
                    failure = f"took over {timeout_s} s" if wait_s >= timeout_s else \
                        "ran past the batch's time budget"
                else:
                    try:
                        reply = conn.recv()
                    except EOFError:
                        failure = "crashed the math-verify worker"
                if reply is None:  # failure says why
                    logger.warning("math-verify on %s %s; counted as %r",
                                   _describe(items[done]), failure, default)
                    self.close()
                    done += 1
                    break
                index, result, problem = reply
                if result is not None:
                    results[start + index] = result
                if problem is not None:
                    logger.warning("math-verify on %s: %s", _describe(items[start + index]), problem)
                done += 1
            start = done
        return results


def _out_of_time(deadline: float | None, left: int) -> bool:
    """True (with one warning) once the batch deadline has passed with ``left`` items to go."""
    if deadline is None or time.monotonic() < deadline:
        return False
    logger.warning("answer checking ran out of its batch time budget; %d remaining answers "
                   "count as no match (raise batch_timeout_s if your answers are this slow)", left)
    return True


_shared_worker = VerifyWorker()
_shared_worker_lock = threading.Lock()


def _run_bounded(kind: str, items: Sequence[tuple[str, ...]], timeout_s: float, deadline: float,
                 default: object) -> list:
    """Job ``kind`` of :data:`_BOUNDED_JOBS` on each item through the worker process; an item
    that fails, overruns ``timeout_s`` or is not reached by ``deadline`` gets ``default``."""
    if not items:
        return []
    # Always the worker, from any thread: math-verify's own signal timeouts only work on the
    # main thread, and even there one long call (a free-text extraction, a huge expression) can
    # sit past its alarm; the worker process is killed when an item overruns.
    with _shared_worker_lock:
        return _shared_worker.run([(kind, *args) for args in items], timeout_s, deadline, default)


def _short(text: str, chars: int = 200) -> str:
    return text if len(text) <= chars else f"{text[:chars]}... ({len(text)} chars)"


def _describe(item: tuple) -> str:
    """One worker item for a log line: its arguments, each cut to 200 characters."""
    return ", ".join(repr(_short(str(arg))) for arg in item)


def _batch_deadline(started: float, batch_timeout_s: float | None, items: int) -> float:
    """When a batch of ``items`` math-verify calls begun at ``started`` must stop (default
    budget: ``BATCH_BASE_S`` plus ``BATCH_PER_ITEM_S`` per item)."""
    if batch_timeout_s is None:
        batch_timeout_s = BATCH_BASE_S + BATCH_PER_ITEM_S * items
    return started + batch_timeout_s


def extract_free_text_answers(
    texts: Sequence[str], *, timeout_s: float = 5.0, batch_timeout_s: float | None = None
) -> list[str | None]:
    """The answer math-verify extracts from each free text (its matched string: LaTeX, then
    plain expressions, e.g. the ``19`` of "The answer is 19."), None when it finds nothing.

    Bounded like :func:`check_answers`, in any thread: each text gets about ``timeout_s``
    seconds and the batch ``batch_timeout_s`` (default: ``BATCH_BASE_S`` plus
    ``BATCH_PER_ITEM_S`` per text); a text that overruns, or is not reached in time, gives
    None (logged). Never raises on any text.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    started = time.monotonic()
    todo = [i for i, text in enumerate(texts) if text.strip()]
    found = _run_bounded("extract", [(texts[i],) for i in todo], timeout_s,
                         _batch_deadline(started, batch_timeout_s, len(todo)), None)
    answers: list[str | None] = [None] * len(texts)
    for i, answer in zip(todo, found):
        answers[i] = answer
    return answers


def check_answers(
    preds: Sequence[str],
    golds: Sequence[str],
    *,
    mode: CheckMode = "math",
    timeout_s: float = 5.0,
    batch_timeout_s: float | None = None,
) -> list[bool]:
    """Whether each prediction matches its gold answer (see the module docstring for modes).

    In ``"math"`` mode pairs where both sides are plain numbers are compared exactly here; the
    rest go through math-verify in one batch, each item limited to about ``timeout_s`` seconds
    and the whole batch to ``batch_timeout_s`` (default: ``BATCH_BASE_S`` plus
    ``BATCH_PER_ITEM_S`` per item). Never raises on any text.
    """
    if len(preds) != len(golds):
        raise ValueError(
            f"check_answers got {len(preds)} predictions but {len(golds)} gold answers"
        )
    if mode not in CHECK_MODES:
        raise ValueError(f"unknown answer check mode {mode!r}; expected one of {CHECK_MODES}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if mode == "exact":
        return [p.strip() == g.strip() for p, g in zip(preds, golds)]
    started = time.monotonic()
    results = [False] * len(preds)
    symbolic: list[int] = []
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        if max(len(pred), len(gold)) > MAX_ANSWER_CHARS:
            results[i] = pred.strip() == gold.strip()
            continue
        pred_num, gold_num = normalize_number(pred), normalize_number(gold)
        if pred_num is not None and gold_num is not None:
            results[i] = pred_num == gold_num
        else:
            symbolic.append(i)
    matches = _run_bounded("match", [(preds[i], golds[i]) for i in symbolic], timeout_s,
                           _batch_deadline(started, batch_timeout_s, len(symbolic)), False)
    for i, match in zip(symbolic, matches):
        results[i] = match
    return results
