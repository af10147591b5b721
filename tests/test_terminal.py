"""What reaches the terminal, without Ray: the libraries' output moved to the run's log file
(Python and native writes alike) while memrl's lines and warnings still reach the terminal;
an actor's output moved to its own file; start-up phases reported by name as they come."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from memrl.actors.startup import StartupPhase, wait_for_phases
from memrl.cluster.placement import Demand
from memrl.errors import PhaseTimeout
from memrl.terminal import LOG_DIR_ENV, libraries_to_file, terminal

REPO = Path(__file__).resolve().parents[1]


def test_libraries_go_to_the_file_and_memrl_lines_to_the_terminal(tmp_path, capfd):
    log = tmp_path / "logs" / "driver.log"
    with libraries_to_file(log):
        print("a library's print")
        os.write(2, b"a native library's line\n")
        logging.getLogger("somelib").warning("a library's warning")
        warnings.warn("a library's deprecation", UserWarning, stacklevel=1)
        logging.getLogger("memrl.somewhere").info("checkpoint written")
        terminal.say("memrl: progress")
        logging.getLogger("memrl.somewhere").warning("something the user must act on")
        terminal.say("done: the result", result=True)
    out, err = capfd.readouterr()
    assert out == "done: the result\n"
    assert err == "memrl: progress\nmemrl: something the user must act on\n"
    text = log.read_text()
    for line in ("a library's print", "a native library's line", "WARNING somelib: a library's warning",
                 "a library's deprecation", "INFO memrl.somewhere: checkpoint written",
                 "memrl.somewhere: something the user must act on"):
        assert line in text, text
    assert "memrl: progress" not in text and "the result" not in text
    print("after")  # everything is back where it was
    os.write(2, b"native after\n")
    assert capfd.readouterr() == ("after\n", "native after\n")


def test_an_actor_writes_its_output_into_its_own_file(tmp_path):
    code = ("import os, sys; from memrl.terminal import redirect_actor_output; "
            "print(redirect_actor_output('learner rank 0')); print('from python'); "
            "os.write(2, b'from native code\\n')")
    env = {**os.environ, LOG_DIR_ENV: str(tmp_path / "logs"), "PYTHONPATH": str(REPO)}
    for _ in range(2):  # a restarted actor appends to its file
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        assert done.stdout == done.stderr == ""
    log = tmp_path / "logs" / "learner-rank-0.log"
    assert log.read_text().count("from python\nfrom native code\n") == 2
    assert str(log) in log.read_text()
    env.pop(LOG_DIR_ENV)  # the run keeps actors' output on the terminal
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout == "None\nfrom python\n" and done.stderr == "from native code\n"


def test_start_up_reports_each_phase_by_name_as_it_becomes_ready():
    polls = {"the learners": 3, "the rollout workers": 1}
    said: list[str] = []

    def ready(name: str):
        def check() -> bool:
            polls[name] -= 1
            return polls[name] <= 0
        return check

    phases = [StartupPhase(name, ready=ready(name), waiting=list, detail=lambda: "hf on cpu")
              for name in polls]
    wait_for_phases(phases, timeout_s=30, say=said.append)
    assert [line.split(" ready after ")[0] for line in said] == ["memrl: the rollout workers",
                                                                  "memrl: the learners"]
    assert all(line.endswith("s (hf on cpu)") for line in said)


def test_start_up_past_its_limit_names_the_actors_still_waiting():
    stuck = StartupPhase("the learners", ready=lambda: False,
                         waiting=lambda: [Demand("learner rank 0", {"CPU": 1.0}, "")])
    said: list[str] = []
    with pytest.raises(PhaseTimeout, match="waiting for start-up of the learners") as info:
        wait_for_phases([stuck], timeout_s=0.5, every_s=0.2, say=said.append)
    assert "learner rank 0 (CPU 1) pending placement or starting" in str(info.value)
    assert said and all(line.startswith("memrl: still in start-up of the learners after") for line in said)


def test_the_result_line_says_when_evaluation_was_off():
    from memrl.cli import _accuracy_text

    measured = {"accuracy_before": 0.145, "accuracy_lenient_before": 0.145, "accuracy_after": 0.755,
                "accuracy_lenient_after": 0.76}
    assert _accuracy_text(measured) == "accuracy 0.145 -> 0.755 (lenient grader 0.145 -> 0.760)"
    assert _accuracy_text({}) == ("evaluation was off (trainer.eval_before_after=false, "
                                  "trainer.eval_every_steps=0)")
    periodic_only = {"accuracy_after": 0.5, "accuracy_lenient_after": 0.5}
    assert _accuracy_text(periodic_only) == "accuracy not measured -> 0.500 (lenient grader not measured -> 0.500)"
