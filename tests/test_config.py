"""Config loading, overrides and rejection of bad values (exit code 2 with the key path)."""

from pathlib import Path

import pytest

from memrl.cli import main
from memrl.config import DEFAULT_CONFIG, ConfigError, TinyModelConfig, load_config, parse_override

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_default_config_is_the_embedded_cpu_default():
    cfg = load_config()
    assert DEFAULT_CONFIG.name == "default.yaml"
    assert cfg.method == "memoryr+"
    assert cfg.model.name_or_path == "tiny"
    assert cfg.task.name == "arith"
    # The base learns to reason, then mostly to answer at once; answers are checked exactly.
    tiny = cfg.model.tiny
    assert tiny.warmstart_free_text_fraction == 0.0 and cfg.task.verifier == "exact"
    assert tiny.habit_steps == 200 and tiny.habit_direct_fraction == 0.6
    assert cfg.task.arith.min_steps == cfg.task.arith.max_steps == 2
    assert TinyModelConfig().habit_steps == 0  # built-in: no second stage
    assert (cfg.rollout.mode, cfg.rollout.num_workers, cfg.model.dtype) == ("async", 1, "auto")
    assert cfg.learner.num_learners == 1
    assert cfg.grpo.prompts_per_step * cfg.grpo.num_generations == cfg.grpo.batch_size


def test_overrides_have_yaml_types_and_reach_nested_keys():
    cfg = load_config(None, ["trainer.max_steps=7", "grpo.beta=0", "logging.tensorboard=false",
                             "method=r1", "memory.k=3"])
    assert cfg.trainer.max_steps == 7 and isinstance(cfg.trainer.max_steps, int)
    assert cfg.grpo.beta == 0.0
    assert cfg.logging.tensorboard is False
    assert cfg.method == "r1" and not cfg.uses_memory
    assert cfg.memory.k == 3


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("grpo.num_generations=1", "grpo.num_generations = 1"),
        ("grpo.batch_size=60", "grpo.batch_size = 60 is not divisible by grpo.num_generations"),
        ("grpo.nope=1", "grpo.nope: unknown key"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("method=ppo", "method"),
        ("task.name=mnist", "task.name"),
        ("learner.num_learners=3", "learner.num_learners = 3"),
        ("model.tiny.num_heads=3", "model.tiny.hidden_size (128) must be divisible"),
        ("grpo.top_p=1.5", "grpo.top_p"),
        ("model.tiny.warmstart_free_text_fraction=1.5", "model.tiny.warmstart_free_text_fraction"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_bad_value_message_shows_the_value():
    with pytest.raises(ConfigError, match=r"trainer.max_steps: .*\(got 'abc'\)"):
        load_config(None, ["trainer.max_steps=abc"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("trainer.max_steps")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["method.sub=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_base_inheritance_and_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("trainer:\n  max_steps: 9\n  lr: 0.01\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrainer:\n  lr: 0.5\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.trainer.max_steps == 9 and cfg.trainer.lr == 0.5
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("model, hub, shots", [
    ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 0),
    ("llama3.2-1b", "meta-llama/Llama-3.2-1B-Instruct", 1),
    ("falcon3-1b", "tiiuae/Falcon3-1B-Instruct", 0),
])
@pytest.mark.parametrize("method", ["r1", "cosine", "memoryr", "memoryr+"])
def test_paper_configs_carry_the_paper_hyper_parameters(model, hub, shots, method):
    cfg = load_config(CONFIGS / f"gsm8k_{model}_{method.replace('+', '_plus')}.yaml")
    assert cfg.method == method
    assert cfg.model.name_or_path == hub
    assert cfg.task.name == "gsm8k" and cfg.task.num_shots == shots
    assert (cfg.grpo.num_generations, cfg.grpo.batch_size) == (16, 256)
    assert (cfg.grpo.max_prompt_length, cfg.grpo.max_completion_length) == (256, 200)
    assert (cfg.grpo.beta, cfg.grpo.temperature) == (0.04, 0.9)
    t = cfg.trainer
    assert (t.lr, t.adam_beta1, t.adam_beta2, t.weight_decay) == (5e-6, 0.9, 0.99, 0.1)
    assert (t.warmup_ratio, t.max_grad_norm, t.save_every_steps) == (0.1, 0.1, 100)
    assert cfg.memory.capacity_values == (1000 if method == "memoryr" else 100)


def test_cli_exit_code_2_names_the_key(capsys):
    assert main(["config", "show", "grpo.num_generations=1"]) == 2
    err = capsys.readouterr().err
    assert "grpo.num_generations = 1" in err


def test_cli_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "trainer.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 3" in out and "method: memoryr+" in out


def test_cli_missing_config_file_exit_2(capsys, tmp_path):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def _leaf_fields(model, prefix=""):
    from pydantic import BaseModel

    from memrl.config_docs import _section_model

    for name, field in model.model_fields.items():
        yield prefix + name, field
        section = _section_model(field.annotation)
        if section is not None and section is not BaseModel:
            yield from _leaf_fields(section, prefix + name + ".")


def test_every_config_key_has_a_description():
    from memrl.config import Config

    missing = [key for key, field in _leaf_fields(Config) if not (field.description or "").strip()]
    assert not missing, f"add Field(description=...) in memrl/config.py for {missing}"


def test_configuration_reference_is_current():
    from memrl.config import Config
    from memrl.config_docs import DOCS_PATH, render_reference

    rendered = render_reference()
    assert DOCS_PATH.read_text(encoding="utf-8") == rendered, (
        "docs/configuration.md is stale: run `memrl config docs` and commit it")
    # every key, with its built-in default, is in the reference
    for key, _field in _leaf_fields(Config):
        assert f"| `{key}` |" in rendered or f"| `{key.replace('rewards.', 'rewards[].')}` |" \
            in rendered, key
    assert "| `trainer.lr` | float (> 0) | `5e-06` |" in rendered
    assert "| `grpo.beta` | float (≥ 0) | `0.04` |" in rendered


def test_config_docs_command_writes_the_reference(tmp_path):
    from memrl.config_docs import render_reference

    out = tmp_path / "configuration.md"
    assert main(["config", "docs", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_reference()


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("gsm8k_qwen2.5-0.5b_r1.yaml").method == "r1"
    assert load_config("configs/default.yaml").task.name == "arith"
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_experiment.yaml")


def test_the_control_methods_and_the_random_bonus_keys():
    explore = load_config(None, ["method=explore"])
    assert explore.uses_memory and explore.uses_explore  # the memory service, without exploit
    cfg = load_config(None, ["method=r1+random", "random_bonus.mean=0.4", "random_bonus.std=0.2"])
    assert not cfg.uses_memory and (cfg.random_bonus.mean, cfg.random_bonus.std) == (0.4, 0.2)
    assert load_config(None, ["method=r1+random", "random_bonus.match_run=runs/m"]).random_bonus.match_run == "runs/m"
    with pytest.raises(ConfigError, match=r"random_bonus.std: .*greater than or equal to 0 \(got -0.1\)"):
        load_config(None, ["method=r1+random", "random_bonus.std=-0.1"])
    with pytest.raises(ConfigError, match="method r1\\+random: random_bonus.mean = random_bonus.std = 0"):
        load_config(None, ["method=r1+random"])
    with pytest.raises(ConfigError, match="random_bonus.match_run .* and random_bonus.mean/std .* both set"):
        load_config(None, ["method=r1+random", "random_bonus.match_run=runs/m", "random_bonus.std=0.1"])
    assert load_config(None, ["method=r1", "random_bonus.std=0.1"]).method == "r1"  # read by r1+random only
