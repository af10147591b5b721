"""Static checks of the launch files in cluster/ and docker/ (nothing is started or built).

The strongest checks use the tools' own validators: Ray's runtime-env parser, Ray's cluster
config schema with the defaults merge that `ray up` applies, memrl's own CLI parser and config
loader for the KubeRay entrypoint, and hadolint when it is installed. The rest pins down the
properties the files promise: token auth on, dashboard on loopback, head on-demand and workers
on spot, pinned images and dependencies that agree with pyproject.toml.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.runtime_env.runtime_env import _merge_runtime_env

from memrl.cli import build_parser
from memrl.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKER = REPO / "docker"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
RUNTIME_ENVS = ["runtime_env.yaml", "runtime_env_pip.yaml"]
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]

# Field names of KubeRay's ray.io/v1 Go types (ray-operator/apis/ray/v1/*_types.go, KubeRay 1.6+).
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
    "schedule",
}
RAYCLUSTER_SPEC_FIELDS = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
    "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "historyServerOptions", "networkPolicy", "tlsOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {
    "template", "headService", "enableIngress", "ingressOptions", "resources", "labels",
    "rayStartParams", "serviceType",
}
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "priority", "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}
AUTH_OPTIONS_FIELDS = {"enableK8sTokenAuth", "secretName", "mode"}
AUTOSCALER_OPTIONS_FIELDS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
    "upscalingMode", "version", "env", "envFrom", "volumeMounts", "command", "args",
}


def load_yaml(path: Path) -> dict:
    """The single YAML document in ``path`` (a mapping)."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: top level is not a mapping"
    return data


def ray_start_head_args(commands: list[str]) -> list[str]:
    """Arguments after ``ray start`` of the head start command in ``commands``."""
    for command in commands:
        for part in re.split(r"[;&|]+", command):
            words = shlex.split(part)
            if words[:2] == ["ray", "start"] and "--head" in words:
                return words[2:]
    raise AssertionError(f"no `ray start --head` in {commands}")


def flag_value(args: list[str], flag: str) -> str | None:
    """Value of ``--flag=value`` or ``--flag value`` in ``args``; None when absent."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def image_tag(ref: str) -> str | None:
    """Tag of an image reference (``registry/name:tag``), or None when it has none."""
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def assert_pinned_image(ref: str, where: str) -> None:
    """An image reference must name a tag other than ``latest`` or a digest."""
    if "@sha256:" in ref:
        return
    tag = image_tag(ref)
    assert tag and tag != "latest", f"{where}: image {ref!r} is not pinned to a tag"


# --- every file -----------------------------------------------------------------------------

class UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loading that refuses a key given twice in one mapping: PyYAML keeps the last
    silently, so a hand-edited launch file could lose a setting without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        keys = [key.value for key, _ in node.value
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge"]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key(s) {repeated} given twice in one mapping", node.start_mark)
        return super().construct_mapping(node, deep)


def test_unique_key_loader_refuses_a_repeated_key() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match=r"\['a'\] given twice"):
        yaml.load("a: 1\nb: {c: 2}\na: 3\n", Loader=UniqueKeyLoader)
    assert yaml.load("a: &x {c: 2}\nb:\n  <<: *x\n  c: 3\n", Loader=UniqueKeyLoader) == \
        {"a": {"c": 2}, "b": {"c": 3}}  # a merge key overridden is no repetition


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")) + [DOCKER / ".hadolint.yaml"],
                         ids=lambda p: p.name)
def test_yaml_files_are_one_mapping_each_without_repeated_keys(path: Path) -> None:
    assert yaml.load(path.read_text(), Loader=UniqueKeyLoader) == load_yaml(path)


def test_nothing_binds_all_interfaces() -> None:
    for path in sorted(p for d in (CLUSTER, DOCKER) for p in d.rglob("*") if p.is_file()):
        assert "0.0.0.0" not in path.read_text(), f"{path} mentions 0.0.0.0"


# --- Ray runtime environments ---------------------------------------------------------------

@pytest.mark.parametrize("name", RUNTIME_ENVS)
def test_runtime_env_uses_real_fields_only(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = load_yaml(CLUSTER / name)
    unknown = set(env) - RuntimeEnv.known_fields
    assert not unknown, f"{name}: not runtime-env fields: {sorted(unknown)}"
    # Ray's own parsing, as `ray job submit` does it on the submitting machine (repo root).
    monkeypatch.chdir(REPO)
    parsed = RuntimeEnv(**env)
    assert parsed["working_dir"] == "."
    assert {".git/", "runs/", "checkpoints/"} <= set(env["excludes"])


@pytest.mark.parametrize("name", RUNTIME_ENVS)
def test_runtime_env_merges_with_a_driver_env(name: str) -> None:
    """memrl's driver calls ray.init(runtime_env={"env_vars": ...}); Ray fails the job at
    start when those keys repeat the job's (reproduced with a real `ray job submit`) unless the
    job sets RAY_OVERRIDE_JOB_RUNTIME_ENV=1. Worst case: the driver sets every key again."""
    env = load_yaml(CLUSTER / name)
    job_vars = env["env_vars"]
    driver = {"env_vars": {key: "driver" for key in job_vars}}
    override = job_vars.get("RAY_OVERRIDE_JOB_RUNTIME_ENV") == "1"
    merged = _merge_runtime_env(env, driver, override=override)
    assert merged is not None, f"{name}: a driver's env_vars would conflict with the job's"
    assert _merge_runtime_env(env, driver, override=False) is None  # the check is not vacuous


def test_pip_runtime_env_differs_only_by_dependencies(monkeypatch: pytest.MonkeyPatch) -> None:
    image_env = load_yaml(CLUSTER / "runtime_env.yaml")
    pip_env = load_yaml(CLUSTER / "runtime_env_pip.yaml")
    assert {k: v for k, v in pip_env.items() if k not in ("pip", "config")} == image_env
    monkeypatch.chdir(REPO)
    packages = RuntimeEnv(**pip_env)["pip"]["packages"]
    assert any(line.startswith("vllm==") for line in packages)
    assert pip_env["config"]["setup_timeout_seconds"] > 600


# --- cluster launcher configs ---------------------------------------------------------------

LAUNCHER_KEYS = {
    "cluster_name", "max_workers", "upscaling_speed", "idle_timeout_minutes", "provider", "auth",
    "available_node_types", "head_node_type", "file_mounts", "setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands", "docker",
}
WORKER_RESOURCE = {"rollout": "rollout_node", "learner": "learner_node"}
# docs/spot.md: only what a run can replace goes on spot capacity.
ON_SPOT = {"rollout": True, "learner": False}


def is_spot(provider: str, node_config: dict) -> bool:
    """Whether a node config asks for spot / preemptible capacity."""
    if provider == "aws":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling", {})
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_rays_own_validation(name: str) -> None:
    """The JSON schema shipped in the ray package, then the defaults merge and checks that
    `ray up` runs before it talks to the cloud."""
    config = load_yaml(CLUSTER / name)
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # Ray's defaults must not slip commands in: no package installs over the image's pins.
    for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands"):
        assert not any("pip install" in c for c in prepared[key]), f"{name}: {key} installs"
    args = ray_start_head_args(prepared["head_start_ray_commands"])
    assert flag_value(args, "--dashboard-host") == "127.0.0.1"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_layout(name: str) -> None:
    config = load_yaml(CLUSTER / name)
    assert LAUNCHER_KEYS <= set(config), f"{name}: missing {sorted(LAUNCHER_KEYS - set(config))}"
    provider = config["provider"]["type"]
    node_types = config["available_node_types"]
    head = config["head_node_type"]
    assert set(node_types) == {head, *WORKER_RESOURCE}
    for type_name, node_type in node_types.items():
        assert {"node_config", "resources", "min_workers", "max_workers"} <= set(node_type), type_name
    assert not is_spot(provider, node_types[head]["node_config"]), f"{name}: head on spot"
    assert node_types[head]["max_workers"] == 0
    for type_name, resource in WORKER_RESOURCE.items():
        node_type = node_types[type_name]
        assert is_spot(provider, node_type["node_config"]) == ON_SPOT[type_name], \
            f"{name}: {type_name} {'not ' if ON_SPOT[type_name] else ''}on spot"
        assert node_type["resources"].get(resource) == 1, f"{name}: {type_name} lacks {resource}"
        assert node_type["min_workers"] == 0 < node_type["max_workers"]
    assert config["max_workers"] == sum(node_types[t]["max_workers"] for t in WORKER_RESOURCE)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_keeps_token_auth_and_loopback_dashboard(name: str) -> None:
    config = load_yaml(CLUSTER / name)
    docker = config["docker"]
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    args = ray_start_head_args(config["head_start_ray_commands"])
    assert flag_value(args, "--dashboard-host") == "127.0.0.1"
    for key in ("image", "head_image"):
        assert_pinned_image(docker[key], f"{name} docker.{key}")
    assert "gpu" in docker["image"] and "cpu" in docker["head_image"]


# --- KubeRay RayJob -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rayjob() -> dict:
    return load_yaml(CLUSTER / "kuberay-rayjob.yaml")


def test_rayjob_uses_kuberay_fields(rayjob: dict) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    checks = [
        ("spec", spec, RAYJOB_SPEC_FIELDS),
        ("rayClusterSpec", cluster, RAYCLUSTER_SPEC_FIELDS),
        ("headGroupSpec", cluster["headGroupSpec"], HEAD_GROUP_FIELDS),
        ("authOptions", cluster["authOptions"], AUTH_OPTIONS_FIELDS),
        ("autoscalerOptions", cluster["autoscalerOptions"], AUTOSCALER_OPTIONS_FIELDS),
    ] + [(f"workerGroupSpecs[{g['groupName']}]", g, WORKER_GROUP_FIELDS)
         for g in cluster["workerGroupSpecs"]]
    for where, section, fields in checks:
        unknown = set(section) - fields
        assert not unknown, f"{where}: unknown KubeRay fields {sorted(unknown)}"


def test_rayjob_entrypoint_is_a_valid_resumable_memrl_run(rayjob: dict) -> None:
    entrypoint = rayjob["spec"]["entrypoint"]
    # KubeRay's submitter passes the entrypoint through a shell: no operators allowed.
    assert not re.search(r"[;&|<>`$]", entrypoint), entrypoint
    words = shlex.split(entrypoint)
    assert words[:2] == ["memrl", "train"]
    ns = build_parser().parse_args(words[1:])
    assert ns.resume == "auto"
    config_path, *overrides = ns.args
    # The image holds the repository at /home/ray/memrl.
    assert config_path.startswith("/home/ray/memrl/configs/")
    local_config = REPO / "configs" / Path(config_path).name
    assert local_config.is_file(), f"{local_config} does not exist"
    cfg = load_config(local_config, overrides)
    assert cfg.trainer.checkpoint_uri.startswith(("s3://", "gs://"))
    assert Path(cfg.output_dir).is_absolute()


def test_rayjob_runtime_env_matches_runtime_env_yaml(rayjob: dict) -> None:
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert set(env) <= RuntimeEnv.known_fields
    assert env["env_vars"] == load_yaml(CLUSTER / "runtime_env.yaml")["env_vars"]


def test_rayjob_cluster_layout(rayjob: dict) -> None:
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and not head.get("enableIngress", False)
    head_pod = head["template"]["spec"]
    assert head_pod["nodeSelector"]["eks.amazonaws.com/capacityType"] == "ON_DEMAND"
    for container in head_pod["containers"]:
        assert_pinned_image(container["image"], "head")
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == set(WORKER_RESOURCE)
    for name, group in groups.items():
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["resources"] == {WORKER_RESOURCE[name]: "1"}
        pod = group["template"]["spec"]
        assert pod["nodeSelector"]["eks.amazonaws.com/capacityType"] == \
            ("SPOT" if ON_SPOT[name] else "ON_DEMAND"), name
        for container in pod["containers"]:
            assert_pinned_image(container["image"], name)
            assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1, name


# --- placement: the files and the config agree ----------------------------------------------

def _rayjob_config(rayjob: dict):
    """The config the RayJob's entrypoint runs (the placement overrides of docs/spot.md)."""
    words = shlex.split(rayjob["spec"]["entrypoint"])
    config_path, *overrides = build_parser().parse_args(words[1:]).args
    return load_config(REPO / "configs" / Path(config_path).name, overrides)


def _placement_kinds(rayjob: dict) -> dict[str, tuple[str, ...]]:
    """Each actor kind's custom resources in the RayJob's config (none may be missing)."""
    cfg = _rayjob_config(rayjob)
    kinds = {"rollout": tuple(cfg.rollout.resources), "learner": tuple(cfg.learner.resources),
             "memory": tuple(cfg.memory.resources)}
    assert all(kinds.values()), f"every actor kind must ask for a node-type resource: {kinds}"
    return kinds


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_places_each_actor_kind_on_the_right_market(name: str, rayjob: dict) -> None:
    config = load_yaml(CLUSTER / name)
    provider = config["provider"]["type"]
    node_types = config["available_node_types"]
    for kind, resources in _placement_kinds(rayjob).items():
        hosts = [t for t, node_type in node_types.items()
                 if all(node_type["resources"].get(r, 0) > 0 for r in resources)]
        assert hosts, f"{name}: no node type offers {resources} for the {kind} actors"
        spot = {is_spot(provider, node_types[t]["node_config"]) for t in hosts}
        assert spot == {kind == "rollout"}, f"{name}: {kind} actors land on {hosts} (spot: {spot})"
    # The container's SIGTERM gives Ray time to drain within the cloud's notice (120 s / 30 s).
    stop = [o for o in config["docker"]["run_options"] if o.startswith("--stop-timeout")]
    assert stop and 20 <= int(stop[0].split()[1]) < {"aws": 120, "gcp": 30}[provider], stop
    # The header shows the same overrides the RayJob uses.
    cfg = _rayjob_config(rayjob)
    for kind in ("rollout", "learner", "memory"):
        (resource, amount), = getattr(cfg, kind).resources.items()
        assert f"{kind}.resources={{{resource}: {amount:g}}}" in (CLUSTER / name).read_text(), kind


def test_rayjob_places_each_actor_kind_on_the_right_market(rayjob: dict) -> None:
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    groups = {"head": (head, False)} | {
        g["groupName"]: (g, g["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"] == "SPOT")
        for g in cluster["workerGroupSpecs"]}
    for kind, resources in _placement_kinds(rayjob).items():
        hosts = [n for n, (g, _) in groups.items() if all(r in g.get("resources", {}) for r in resources)]
        assert hosts, f"no group offers {resources} for the {kind} actors"
        assert {groups[n][1] for n in hosts} == {kind == "rollout"}, (kind, hosts)
    cfg = _rayjob_config(rayjob)
    assert cfg.memory.num_gpus == 0  # the head has no GPU
    rollout_pod = groups["rollout"][0]["template"]["spec"]
    assert 20 <= rollout_pod["terminationGracePeriodSeconds"] < 120


# --- images ---------------------------------------------------------------------------------

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile, continuation lines joined and
    comment lines dropped."""
    joined, pending = [], ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            joined.append(pending.strip())
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def shell_commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN line (split at &&, ||, ;), each as words."""
    return [shlex.split(part) for part in re.split(r"&&|\|\||;", run_args) if part.strip()]


def pip_install_args(words: list[str]) -> list[str] | None:
    """Arguments after ``pip install`` / ``uv pip install``; None if not a pip install."""
    for i in range(len(words) - 1):
        if words[i] in ("pip", "pip3") and words[i + 1] == "install":
            return words[i + 2:]
    return None


def requirement_pins(path: Path) -> dict[str, Requirement]:
    """Requirements of a requirements file by canonical name; each must pin one version."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} not pinned"
        pins[canonicalize_name(req.name)] = req
    return pins


def pinned_version(req: Requirement) -> str:
    return next(iter(req.specifier)).version


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_rules(name: str) -> None:
    """Our own rules (hadolint covers generic ones when installed): pinned bases, pinned pip
    installs without a cache, dependencies installed before the source is copied, non-root."""
    instructions = dockerfile_instructions(DOCKER / name)
    stages: set[str] = set()
    env_text = " ".join(args for op, args in instructions if op == "ENV")
    dependency_install = copy_source = copy_pyproject = None
    for index, (op, args) in enumerate(instructions):
        if op == "FROM":
            words = args.split()
            assert_pinned_image(words[0], f"{name} FROM")
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
        elif op == "COPY":
            words = args.split()
            source_from = [w.split("=", 1)[1] for w in words if w.startswith("--from=")]
            assert all(s in stages for s in source_from), f"{name}: COPY {args}"
            sources = [w for w in words[:-1] if not w.startswith("--")]
            if "pyproject.toml" in sources and copy_pyproject is None:
                copy_pyproject = index
            if "memrl/" in sources:
                copy_source = index
        elif op == "RUN":
            for words in shell_commands(args):
                pip_args = pip_install_args(words)
                if pip_args is None:
                    continue
                uses_uv = words[0] == "uv"
                assert ("--no-cache-dir" in pip_args) or (uses_uv and "UV_NO_CACHE=1" in env_text), \
                    f"{name}: pip cache kept by {' '.join(words)!r}"
                skip_value = {"-r", "--requirement", "-e", "--editable", "-i", "--index-url"}
                packages = [a for i, a in enumerate(pip_args)
                            if not a.startswith("-") and pip_args[i - 1] not in skip_value]
                for package in packages:
                    assert "==" in package, f"{name}: {package!r} not pinned"
                for i, arg in enumerate(pip_args[:-1]):
                    if arg in ("-r", "--requirement"):
                        assert (DOCKER / Path(pip_args[i + 1]).name).is_file()
                        dependency_install = index if dependency_install is None else dependency_install
    users = [args.strip() for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{name}: does not end as a non-root user"
    assert dependency_install is not None and copy_source is not None and copy_pyproject is not None
    assert dependency_install < copy_source, f"{name}: dependencies installed after the source"
    assert copy_pyproject <= copy_source, f"{name}: pyproject.toml copied after the source"


def test_images_share_python_and_pins() -> None:
    """Ray refuses nodes whose Python patch version differs from the head's; driver and
    workers must also agree on Ray, transformers, numpy."""
    cpu = dockerfile_instructions(DOCKER / "Dockerfile.cpu")
    gpu = dockerfile_instructions(DOCKER / "Dockerfile.gpu")
    cpu_base = next(args for op, args in cpu if op == "FROM").split()[0]
    assert cpu_base.startswith("python:")
    cpu_python = image_tag(cpu_base).split("-")[0]
    gpu_runs = " ".join(args for op, args in gpu if op == "RUN")
    gpu_python = re.search(r"uv venv .*--python (\S+)", gpu_runs).group(1)
    assert cpu_python == gpu_python
    cpu_pins = requirement_pins(DOCKER / "requirements-cpu.txt")
    gpu_pins = requirement_pins(DOCKER / "requirements-gpu.txt")
    for name in cpu_pins.keys() & gpu_pins.keys():
        assert str(cpu_pins[name]) == str(gpu_pins[name]), name
    cpu_torch = re.search(r"torch==(\S+)", " ".join(args for op, args in cpu if op == "RUN"))
    assert cpu_torch.group(1) == pinned_version(cpu_pins["torch"])


# Ids other than a bare "gpu": conftest.py skips tests carrying the keyword "gpu" without CUDA.
@pytest.mark.parametrize("flavour", ["cpu", "gpu"], ids=["cpu-image", "gpu-image"])
def test_requirement_pins_cover_pyproject(flavour: str) -> None:
    """The images install memrl with --no-deps: the pins must name every dependency of
    pyproject.toml (GPU: faiss-gpu-cu12 instead of faiss-cpu, plus the gpu extra), with versions
    inside pyproject's ranges (CPU: plus the cpu extra, vLLM's CPU build), and the fsspec back
    ends for s3:// and gs:// checkpoints."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    if flavour == "gpu":
        wanted = [r for r in wanted if canonicalize_name(r.name) != "faiss-cpu"]
        wanted += [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    else:  # the CPU image's rollout engine is vLLM's CPU build (the cpu extra)
        wanted += [Requirement(r) for r in project["optional-dependencies"]["cpu"]]
    pins = requirement_pins(DOCKER / f"requirements-{flavour}.txt")
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements-{flavour}.txt lacks {req.name}"
        assert req.specifier.contains(pinned_version(pins[name]), prereleases=True), \
            f"requirements-{flavour}.txt: {pins[name]} outside pyproject's {req}"
        assert req.extras <= pins[name].extras, f"{pins[name]} drops extras of {req}"
    assert {"s3fs", "gcsfs"} <= pins.keys()
    if flavour == "gpu":
        assert "faiss-cpu" not in pins  # it would overwrite faiss-gpu's files


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name: str) -> None:
    result = subprocess.run(
        ["hadolint", "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / name)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- CI -------------------------------------------------------------------------------------

def test_ci_runs_the_readmes_test_command() -> None:
    """.ci/run's command line is literally the README's test command (a fresh clone's CI
    installs what the README tells a user to install, vLLM's CPU build included)."""
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.startswith("pip install")]
    assert len(ci_lines) == 1, ci_lines
    readme = (REPO / "README.md").read_text()
    assert f"```bash\n{ci_lines[0]}\n```" in readme
    assert '".[cpu,test]"' in ci_lines[0] and "pip uninstall -y torchvision" in ci_lines[0]
