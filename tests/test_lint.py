"""The whole tree passes the linter (ruff, configured in pyproject.toml), so CI's one command
(.ci/run = the README's test command) lints too."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean_on_the_whole_tree() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[cpu,test]'"
    result = subprocess.run([ruff, "check", "--no-cache", str(REPO)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
