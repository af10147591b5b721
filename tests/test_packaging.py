"""The wheel carries the actors and configs inside memrl's namespace; an installed memrl finds
its default config from any directory; a checkout that is not installed imports memrl.actors."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent


def _package_folders() -> set[str]:
    """Every package under memrl/ on disk, plus the two folders installed into its namespace."""
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "memrl").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    return found | {"memrl.actors", "memrl.configs"}


def test_pyproject_lists_every_package_folder():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = _package_folders() - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"
    assert not listed - _package_folders(), "pyproject.toml lists packages that do not exist"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy so the test never writes build/ or egg-info into the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("memrl", "actors", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
         "-w", str(out)],
        check=True, capture_output=True, timeout=120,
    )
    (built,) = out.glob("memrl-*.whl")
    return built


def test_wheel_holds_actors_and_configs_under_memrl(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert tops == {"memrl", "memrl-0.1.0.dist-info"}, f"unexpected top-level entries {tops}"
    for actor in ("__init__", "learner", "memory", "rollout"):
        assert f"memrl/actors/{actor}.py" in names
    shipped = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {n.removeprefix("memrl/configs/") for n in names if n.startswith("memrl/configs/")} == shipped
    for package in _package_folders() - {"memrl.configs"}:
        assert package.replace(".", "/") + "/__init__.py" in names, package
    # The shipped default base travels with the wheel, every file of it.
    base_files = {str(p.relative_to(REPO)) for p in (REPO / "memrl" / "model" / "bases").glob("*/*")
                  if p.is_file()}
    assert base_files and base_files <= names


def test_installed_wheel_trains_from_any_directory_with_its_default_config(wheel, tmp_path):
    venv = tmp_path / "venv"
    # System site-packages give the dependencies; the venv's own memrl (the wheel) comes first.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=120)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import memrl, memrl.actors, memrl.config as c; "
        "cfg = c.load_config(); named = c.load_config('gsm8k_qwen2.5-0.5b_r1.yaml'); "
        "print(memrl.__file__, memrl.actors.__file__, c.DEFAULT_CONFIG, cfg.task.name, named.method)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", probe], cwd=elsewhere, env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    site = str(venv)
    assert out[0].startswith(site) and out[1].startswith(site) and out[2].startswith(site), out
    assert out[2].endswith("memrl/configs/default.yaml")
    assert out[3:] == ["arith", "r1"]
    # The console script resolves the same default: `memrl config show` from another directory.
    shown = subprocess.run([str(venv / "bin" / "memrl"), "config", "show", "trainer.max_steps=3"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True,
                           timeout=60).stdout
    assert "max_steps: 3" in shown and "name_or_path: tiny" in shown


def test_checkout_without_install_imports_memrl_actors(tmp_path):
    # Ray's working_dir (cluster/runtime_env_pip.yaml) runs an uploaded copy that is not installed.
    for name in ("memrl", "actors", "configs"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("import memrl.actors, memrl.config as c; "
             "print(memrl.actors.__file__, c.DEFAULT_CONFIG.is_file())")
    # The editable install of the real checkout is on sys.path too: the copy's own actors must win.
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=60)
    actors_file, default_found = out.stdout.split()
    assert Path(actors_file) == tmp_path / "actors" / "__init__.py"
    assert default_found == "True"
