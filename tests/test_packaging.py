"""The wheel carries the actors and configs inside memrl's namespace; an installed memrl finds
its default config from any directory; memrl.actors is the top-level actors/ folder (through the
committed symlink memrl/actors -> ../actors) in a checkout, installed or not, and in what Ray's
working_dir uploads."""

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _package_folders() -> set[str]:
    """Every package under memrl/ on disk, plus the two folders installed into its namespace
    (memrl/actors is a symlink, which rglob does not enter)."""
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
    # Build from a copy so the test never writes build/ or egg-info into the checkout; the copy
    # keeps memrl/actors a symlink, as a clone has it.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("memrl", "actors", "configs"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
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


def test_memrl_actors_is_the_top_level_actors_folder():
    link = REPO / "memrl" / "actors"
    assert link.is_symlink() and os.readlink(link) == "../actors", "memrl/actors must link to ../actors"
    modules = sorted(p.stem for p in (REPO / "actors").glob("*.py"))
    assert {"__init__", "learner", "memory", "rollout"} <= set(modules)
    for name in modules:
        module = importlib.import_module("memrl.actors" if name == "__init__" else f"memrl.actors.{name}")
        assert Path(module.__file__).resolve() == REPO / "actors" / f"{name}.py", name


def test_ray_working_dir_upload_ships_memrl_actors(tmp_path):
    # What `ray job submit --runtime-env cluster/runtime_env.yaml` uploads (working_dir: .):
    # Ray's packer follows the symlink and ships memrl/actors as files.
    from ray._private.runtime_env.packaging import _zip_files

    checkout, upload = tmp_path / "checkout", tmp_path / "working_dir.zip"
    for name in ("memrl", "actors"):
        shutil.copytree(REPO / name, checkout / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    _zip_files(str(checkout), [], str(upload), include_gitignore=True)
    names = set(zipfile.ZipFile(upload).namelist())
    for actor in (p.name for p in (REPO / "actors").glob("*.py")):
        assert f"memrl/actors/{actor}" in names and f"actors/{actor}" in names, actor


def test_checkout_without_install_imports_memrl_actors(tmp_path):
    # A clone that is not installed (the copy keeps memrl/actors a symlink, as git checks it out).
    for name in ("memrl", "actors", "configs"):
        shutil.copytree(REPO / name, tmp_path / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    probe = ("import memrl.actors, memrl.config as c; "
             "print(memrl.actors.__file__, c.DEFAULT_CONFIG.is_file())")
    # The editable install of the real checkout is on sys.path too: the copy's own actors must win.
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=60)
    actors_file, default_found = out.stdout.split()
    assert Path(actors_file).resolve() == (tmp_path / "actors" / "__init__.py").resolve()
    assert default_found == "True"
