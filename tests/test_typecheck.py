"""memrl/ and actors/ pass the type checker (pyright, configured in pyproject.toml's
[tool.pyright]), so CI's one command (.ci/run = the README's test command) type-checks too."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyright_is_clean_on_memrl_and_actors() -> None:
    assert importlib.util.find_spec("pyright"), "pyright is not installed: pip install -e '.[cpu,test]'"
    # --outputjson: one error per entry, and PyPI's pyright wrapper then skips its online check
    # for a newer version; --pythonpath: the libraries of the environment running the tests.
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--project", str(REPO),
         "--pythonpath", sys.executable],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode in (0, 1), f"pyright failed to run:\n{result.stdout}{result.stderr}"
    errors = [d for d in json.loads(result.stdout)["generalDiagnostics"] if d["severity"] == "error"]
    if errors:
        lines = [f"{Path(d['file']).relative_to(REPO)}:{d['range']['start']['line'] + 1}: "
                 f"{d['message']} ({d.get('rule', 'pyright')})" for d in errors]
        pytest.fail(f"{len(errors)} type errors:\n" + "\n".join(lines), pytrace=False)
