"""The pure parts of the throughput benchmarks (bench/rollout.py, weight_sync.py, e2e_vs_trl.py):
token counting, summaries and ratios, alternating rounds, the JSON figures, the TRL settings and reward."""

import json
import os

import pytest
import torch

from bench import _common as common
from bench import e2e_vs_trl as e2e
from bench import rollout, weight_sync
from memrl.cluster.requests import request_seed
from memrl.config import load_config
from memrl.model.tiny import train_bpe_tokenizer
from memrl.prompts import record_prompt
from memrl.rollout.engine import build_rollout_batch
from memrl.tasks import build_task
from memrl.train.data_stream import PromptStream
from memrl.types import Record

EOS = 2
# EOS after 2 tokens (3 counted), no EOS (5), EOS first then more EOS (1): 9 tokens in all.
COMPLETIONS = torch.tensor([[5, 6, EOS, 0, 0], [5, 6, 7, 8, 9], [EOS, EOS, 0, 0, 0]])


class _DecodeOnly:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_bare_engine_counts_tokens_as_the_rollout_worker_does():
    bare = common.count_generated_tokens(COMPLETIONS, torch.ones_like(COMPLETIONS), [EOS])
    batch = build_rollout_batch(
        prompt_ids=torch.ones(3, 2, dtype=torch.long), prompt_mask=torch.ones(3, 2, dtype=torch.long),
        completion_ids=COMPLETIONS, generated=torch.ones_like(COMPLETIONS),
        behaviour_logprobs=torch.zeros(3, 5), eos_ids=[EOS], pad_id=0, weight_version=0,
        tokenizer=_DecodeOnly(), record_ids=["a", "b", "c"], num_generations=1)
    assert bare == 9
    assert int(batch.completion_mask.sum()) == 9  # what RolloutWorker reports as info["tokens"]


def test_vllm_token_lists_count_the_same_way():
    assert common.count_generated_token_lists([[5, 6, EOS], [5, 6, 7, 8, 9], [EOS]], [EOS]) == 9
    assert common.count_generated_token_lists([[5, EOS, 7]], [EOS]) == 2


def test_summarise_and_ratio():
    s = common.summarise([float(v) for v in range(1, 11)])
    assert s == {"median": 5.5, "p90": pytest.approx(9.1), "mean": 5.5, "min": 1.0, "max": 10.0,
                 "n": 10}
    with pytest.raises(ValueError, match="no values"):
        common.summarise([])
    assert common.ratio(3.0, 2.0, "x") == 1.5
    with pytest.raises(ValueError, match="speedup: denominator 0"):
        common.ratio(1.0, 0.0, "speedup")


def test_format_table_aligns_columns():
    text = common.format_table(["row", "s"], [["a", 1.23456], ["long name", 12.0]])
    # widths 9 and 6, two spaces apart; floats with 3 decimals, first column left-aligned
    assert text.splitlines() == ["row" + " " * 13 + "s", "a" + " " * 11 + "1.235", "long name  12.000"]


def test_request_seeds_differ_per_run_step_and_chunk_and_the_rollout_bench_uses_them():
    # Every chunk of every step of a run samples with its own seed, and so does another run ...
    keys = [(run, step, chunk) for run in range(3) for step in range(300) for chunk in range(64)]
    seeds = [request_seed(*key) for key in keys]
    assert len(set(seeds)) == len(keys)
    # ... while a chunk sent again (to whichever worker) samples with the same seed.
    assert [request_seed(*key) for key in keys] == seeds
    assert rollout.request_seed is request_seed  # the benchmark samples as training does


def test_alternating_rounds_take_turns_and_drop_the_warmup():
    calls = []

    def row(name):
        def run(index):
            calls.append((name, index))
            return 10 * index + len(name)
        return run

    out = common.alternating_rounds({"a": row("a"), "bb": row("bb")}, rounds=3, warmup=1)
    # Round by round, rows in the given order, each told its round; the warm-up round dropped.
    assert calls == [("a", 0), ("bb", 0), ("a", 1), ("bb", 1), ("a", 2), ("bb", 2), ("a", 3), ("bb", 3)]
    assert out == {"a": [11, 21, 31], "bb": [12, 22, 32]}
    with pytest.raises(ValueError, match="rounds 0"):
        common.alternating_rounds({"a": row("a")}, rounds=0)


def test_ratio_rounds_and_median_range():
    r = common.ratio_rounds([2.0, 3.0, 8.0], [1.0, 2.0, 2.0], "speedup")
    assert r["per_round"] == [2.0, 1.5, 4.0]  # round by round, not a ratio of medians (3/2)
    assert (r["median"], r["min"], r["max"], r["n"]) == (2.0, 1.5, 4.0, 3)
    assert common.median_range(r) == "2.00 (1.50-4.00)"
    with pytest.raises(ValueError, match="speedup: 2 numerator rounds but 1"):
        common.ratio_rounds([1.0, 2.0], [1.0], "speedup")
    with pytest.raises(ValueError, match="speedup: denominator 0"):
        common.ratio_rounds([1.0], [0.0], "speedup")


def test_rollout_figures():
    bare = [rollout.Run(1000, 1.0), rollout.Run(1000, 2.0), rollout.Run(1000, 1.25)]  # 1000, 500, 800 tok/s
    one = [rollout.Run(1000, 1.25, 1.0), rollout.Run(1000, 2.5, 2.0), rollout.Run(1000, 1.6, 1.5)]  # 800, 400, 625
    two = [rollout.Run(1000, 0.5, 0.4), rollout.Run(1000, 1.0, 0.9), rollout.Run(900, 0.9, 0.8)]  # 2000, 1000, 1000
    bare_two = [rollout.Run(1000, 1.0), rollout.Run(1000, 0.8), rollout.Run(1000, 2.0)]  # 1000, 1250, 500
    figures = rollout.rollout_figures(bare, {"1_worker": one, "2_workers": two})
    assert figures["bare_tokens_per_s"]["median"] == 800.0
    assert figures["bare_tokens_per_s"]["per_round"] == [1000.0, 500.0, 800.0]
    assert figures["memrl_1_worker_tokens_per_s"]["median"] == 625.0  # of 800, 400, 625
    # Ratios round by round (800/1000, 400/500, 625/800), with their median and range.
    fraction = figures["fraction"]
    assert fraction is figures["fraction_1_worker"]
    assert fraction["per_round"] == pytest.approx([0.8, 0.8, 0.78125])
    assert (fraction["median"], fraction["min"], fraction["max"]) == pytest.approx((0.8, 0.78125, 0.8))
    assert figures["fraction_2_workers"]["per_round"] == pytest.approx([2.0, 2.0, 1.25])
    assert figures["overhead_s"]["ray"] == pytest.approx(0.25)  # median of 0.25, 0.5, 0.1
    assert figures["overhead_s"]["engine"] == pytest.approx(1.5 - 1.25)
    assert figures["same_tokens"] is True
    assert figures["target_fraction"] == 0.9
    json.dumps(figures)  # what --json writes
    # A row measured in its own phase is compared with the bare rounds of that phase.
    phased = rollout.rollout_figures(bare, {"1_worker": one, "2_workers": two}, bare_for={"2_workers": bare_two})
    assert phased["fraction_2_workers"]["per_round"] == pytest.approx([2.0, 0.8, 2.0])
    assert phased["bare_2_workers_phase_tokens_per_s"]["per_round"] == [1000.0, 1250.0, 500.0]
    assert phased["fraction_1_worker"] == fraction
    with pytest.raises(ValueError, match="1_worker"):
        rollout.rollout_figures(bare, {"2_workers": two})
    with pytest.raises(ValueError, match="2_workers: 3 numerator rounds but 2"):
        rollout.rollout_figures(bare, {"1_worker": one, "2_workers": two}, bare_for={"2_workers": bare_two[:2]})


def test_sync_timing_and_figures():
    first = weight_sync.SyncTiming(publish=0.1, pack=0.05, fetch=[0.01, 0.03], load=[0.02, 0.01],
                                   request_wall=0.2, noop_wall=0.15, reload=[0.015, 0.008],
                                   verify=[0.005, 0.002])
    second = weight_sync.SyncTiming(publish=0.2, pack=0.1, fetch=[0.05], load=[0.05],
                                    request_wall=0.3, noop_wall=0.1, reload=[0.03], verify=[0.02])
    assert first.seconds == pytest.approx(0.14)  # publish + slowest worker's fetch + load
    assert first.wall_minus_noop == pytest.approx(0.15)
    assert first.put == pytest.approx(0.05)  # publish beyond packing
    figures = weight_sync.sync_figures([first, second], nbytes=4096)
    assert figures["seconds"]["median"] == pytest.approx(0.22)
    assert figures["speedup"] == pytest.approx(0.5 / 0.22)
    assert figures["seconds_raw"] == pytest.approx([0.14, 0.3])
    assert figures["fetch_s"]["median"] == pytest.approx(0.04)
    assert figures["put_s"]["median"] == pytest.approx(0.075)
    assert figures["reload_s"]["median"] == pytest.approx(0.0225)
    assert figures["nbytes"] == 4096 and figures["target_s"] == 0.5
    without_phases = weight_sync.sync_figures([weight_sync.SyncTiming(
        publish=0.1, pack=0.05, fetch=[0.01], load=[0.02], request_wall=0.2, noop_wall=0.1)], 8, 1.5)
    assert "reload_s" not in without_phases and without_phases["target_s"] == 1.5
    json.dumps(figures)


def test_weight_sync_report_and_node_rounds():
    assert weight_sync.node_rounds(4) == [1, 2, 4]
    assert weight_sync.node_rounds(6) == [1, 2, 4, 6] and weight_sync.node_rounds(1) == [1]
    timing = weight_sync.SyncTiming(publish=0.1, pack=0.05, fetch=[0.01], load=[0.02],
                                    request_wall=0.2, noop_wall=0.1, reload=[0.015], verify=[0.005])
    figures = weight_sync.sync_figures([timing], nbytes=2**20, target_s=1.5)
    figures["config"] = {"model": "qwen2", "dtype": "float32", "workers": 1, "engine": "vllm", "repeats": 1}
    figures["memory"] = {"learner_peak_rss_bytes": 2**31, "worker_peak_rss_bytes": [2**30, None]}
    figures["late_joiner"] = {"start_s": 30.0, "seconds": 0.5, "fetch_s": 0.1, "load_s": 0.4}
    figures["nodes"] = {"by_nodes": {"1": {"median": 1.0, "max": 1.1}, "4": {"median": 2.0, "max": 2.5}}}
    text = weight_sync.report(figures)
    for expected in ("model qwen2 (1.0 MiB packed, float32)", "put (object store)", "reload", "verify",
                     "learner 2.00, workers 1.00, ?", "late joiner: started in 30.0 s",
                     "nodes pulling at once"):
        assert expected in text, expected
    assert weight_sync.peak_rss_bytes(os.getpid()) > 0 and weight_sync.peak_rss_bytes(2**30) is None


def test_gpu_overrides(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert weight_sync.gpu_overrides(["a=1"], 2) == ["a=1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert weight_sync.gpu_overrides(["a=1"], 2) == [
        "a=1", "learner.num_gpus=0.5", "rollout.num_gpus_per_worker=0.25",
        "rollout.gpu_memory_utilization=0.200"]
    placed = ["rollout.num_gpus_per_worker=1"]
    assert weight_sync.gpu_overrides(placed, 2) == placed


def test_random_model_sizes_and_the_paper_architectures():
    config = common.random_model_config("1.5b")
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (1536, 28, 2)
    assert config.tie_word_embeddings
    with pytest.raises(ValueError, match="--model-size '7b'"):
        common.random_model_config("7b")
    # The paper models are built as replicas of their own architectures (memrl.model.replicas).
    assert {"qwen2", "llama3", "falcon3"} <= set(common.MODEL_SIZES)


def test_steady_intervals_drop_warmup_steps():
    ends = [10.0, 11.0, 12.5, 13.5, 14.0]  # steps 1..5 ended here
    assert e2e.steady_intervals(ends, 1) == pytest.approx([1.0, 1.5, 1.0, 0.5])
    assert e2e.steady_intervals(ends, 2) == pytest.approx([1.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="must be >= 1"):
        e2e.steady_intervals(ends, 0)
    with pytest.raises(ValueError, match="raise --steps"):
        e2e.steady_intervals(ends, 5)


def test_phase_breakdown_uses_steps_after_warmup():
    def step(n, scale):
        return {"step": n, **{f"time/{p}": scale for p in e2e.PHASES},
                "throughput/tokens_per_s": 100.0 * scale, "completion/length/mean": 10.0 * scale}

    records = [step(1, 9.0), step(2, 1.0), step(3, 3.0), step(4, 2.0), {"step": 4, "eval/accuracy": 0.5}]
    phases = e2e.phase_breakdown(records, warmup_steps=1)
    assert phases["generate"] == 2.0 and phases["step"] == 2.0
    assert phases["tokens_per_s"] == 200.0 and phases["completion_tokens"] == 20.0
    with pytest.raises(ValueError, match="after warm-up step 4"):
        e2e.phase_breakdown(records, warmup_steps=4)


@pytest.mark.parametrize("batch,micro,expected", [(64, 32, (32, 2)), (64, 64, (64, 1)),
                                                  (64, 100, (64, 1)), (48, 32, (24, 2)),
                                                  (60, 16, (15, 4))])
def test_trl_batch_split_matches_memrl_micro_batches(batch, micro, expected):
    assert e2e.trl_batch_split(batch, micro) == expected


def test_trl_batch_split_rejects_uneven_micro_batches():
    with pytest.raises(ValueError, match="learner.micro_batch_size=16"):
        e2e.trl_batch_split(50, 16)


def test_e2e_figures_compare_round_by_round_against_the_fastest_trl_configuration():
    memrl = {"r1": [[1.0, 1.0], [2.0, 2.0], [1.5]], "memoryr+": [[2.0], [2.5], [2.0]]}
    # transformers:1's round medians 3, 3, 3 (median 3); transformers:2's 2.5, 5, 2 (median 2.5)
    trl = {"transformers:1": [[3.0], [3.0], [3.0]], "transformers:2": [[2.0, 3.0], [5.0], [2.0]]}
    figures = e2e.e2e_figures(memrl, trl)
    assert figures["trl_baseline"] == "transformers:2"
    assert figures["like_for_like_row"] == "r1"
    # each round divided by the same round's baseline: 2.5/1, 5/2, 2/1.5
    assert figures["speedup_rounds"] == pytest.approx([2.5, 2.5, 4 / 3])
    assert figures["speedup"] == pytest.approx(2.5)
    assert figures["speedup_range"] == pytest.approx([4 / 3, 2.5])
    assert figures["speedup_lowest_round"] == pytest.approx(4 / 3)
    assert figures["speedups"]["memoryr+"]["per_round"] == pytest.approx([1.25, 2.0, 1.0])
    assert figures["speedups"]["memoryr+"]["median"] == pytest.approx(1.25)
    assert figures["memrl"]["r1"]["round_medians"] == [1.0, 2.0, 1.5]
    assert figures["memrl"]["r1"]["s_per_step"]["n"] == 5
    assert figures["trl_runs"]["transformers:2"]["steps_s"] == [[2.0, 3.0], [5.0], [2.0]]
    json.dumps(figures)
    with pytest.raises(ValueError, match="3 numerator rounds but 2 denominator rounds"):
        e2e.e2e_figures({"r1": [[1.0], [1.0]]}, trl)


def test_rounds_alternate_memrl_and_trl_and_reverse_every_other_round():
    order = e2e.round_order(["r1", "memoryr+"], ["transformers:1", "transformers:2", "vllm:2"], 3)
    first = [("memrl", "r1"), ("trl", "transformers:1"), ("memrl", "memoryr+"),
             ("trl", "transformers:2"), ("trl", "vllm:2")]
    assert order == [first, first[::-1], first]
    assert e2e.round_order(["r1", "memoryr+", "r1@vllm"], ["transformers:2"], 1) == [
        [("memrl", "r1"), ("trl", "transformers:2"), ("memrl", "memoryr+"), ("memrl", "r1@vllm")]]
    with pytest.raises(ValueError, match="--rounds 0"):
        e2e.round_order(["r1"], ["transformers:1"], 0)


def test_trl_setups_name_backend_threads_and_precision():
    assert e2e.parse_trl_setup("transformers:1", 2) == e2e.TrlSetup("transformers", 1, "fp32")
    assert e2e.parse_trl_setup("vllm:all", 16).name == "vllm:16"
    assert e2e.parse_trl_setup("cb:all:bf16", 2) == e2e.TrlSetup("cb", 2, "bf16")
    assert e2e.parse_trl_setup("transformers:2:bf16", 2).name == "transformers:2:bf16"
    for bad in ("hf:1", "vllm", "transformers:0", "transformers:two", "transformers:2:fp16",
                "transformers:2:bf16:x"):
        with pytest.raises(ValueError, match=f"--trl-configs '{bad}'"):
            e2e.parse_trl_setup(bad, 2)
    assert e2e.default_trl_setups(2, on_vllm=True, bf16=True) == [
        "transformers:1", "transformers:2", "transformers:2:bf16", "vllm:2"]
    assert e2e.default_trl_setups(2, on_vllm=False, bf16=False) == ["transformers:1", "transformers:2"]
    assert e2e.default_trl_setups(1, on_vllm=False, bf16=False) == ["transformers:1"]


def test_parse_row():
    assert e2e.parse_row("r1") == ("r1", None, None)
    assert e2e.parse_row("memoryr+:async") == ("memoryr+", "async", None)
    assert e2e.parse_row("r1@vllm") == ("r1", None, "vllm")
    assert e2e.parse_row("r1:sync@hf") == ("r1", "sync", "hf")
    for bad in ("ppo", "r1:fast", "r1@tpu", "r1:", "r1@"):
        with pytest.raises(ValueError, match=f"--rows '{bad}'"):
            e2e.parse_row(bad)
    assert [e2e.row_name(*e2e.parse_row(r)) for r in ("r1", "r1:async@vllm")] == ["r1", "r1:async@vllm"]


def test_memrl_row_overrides_name_the_layout_and_engine(tmp_path):
    plain = e2e.memrl_overrides("r1", None, 3, tmp_path)
    assert not [o for o in plain if o.startswith(("rollout.mode", "rollout.num_workers", "rollout.engine"))]
    assert {"rollout.mode=sync", "rollout.num_workers=2", "rollout.engine=hf"} <= set(
        e2e.memrl_overrides("r1", "sync", 3, tmp_path, "hf", cores=2))
    overrides = e2e.memrl_overrides("r1", "async", 3, tmp_path, "vllm", cores=2)
    assert {"rollout.engine=vllm", "rollout.mode=async", "rollout.num_workers=1", "method=r1"} <= set(overrides)
    assert "rollout.num_workers=1" in e2e.memrl_overrides("r1", "async", 3, tmp_path, cores=1)


def test_the_faster_trl_configuration_is_the_baseline():
    assert e2e.fastest({"transformers:1": [1.0, 2.0, 3.0], "transformers:2": [1.5, 1.5]}) == "transformers:2"
    assert e2e.fastest({"transformers:1": [1.0]}) == "transformers:1"
    with pytest.raises(ValueError, match="no runs"):
        e2e.fastest({})


def test_rollout_engines_side_by_side():
    bare = [rollout.Run(1000, 1.0), rollout.Run(1000, 1.0)]
    hf = rollout.rollout_figures(bare, {"1_worker": [rollout.Run(900, 1.0, 0.9), rollout.Run(800, 1.0, 0.9)]},
                                 [rollout.Run(950, 1.0)] * 2)
    vllm = rollout.rollout_figures([rollout.Run(3000, 1.0)] * 2,
                                   {"1_worker": [rollout.Run(2800, 1.0, 0.95)] * 2})
    figures = rollout.side_by_side({"vllm": vllm, "hf": hf})
    vllm_over_hf = figures["vllm_over_hf"]  # round by round: 2800/900, 2800/800
    assert vllm_over_hf["per_round"] == pytest.approx([2800 / 900, 2800 / 800])
    assert (vllm_over_hf["min"], vllm_over_hf["max"]) == pytest.approx((2800 / 900, 2800 / 800))
    rows = rollout.table_rows(figures["engines"])
    assert [r[0] for r in rows] == ["bare vllm.LLM.generate (1 thread)", "memrl vllm rollout, 1 worker",
                                    "bare transformers generate (1 thread)", "memrl HFEngine, no Ray",
                                    "memrl hf rollout, 1 worker"]
    # row, median tokens/s, min, max, vs bare (median over rounds), its range
    assert [r[1:4] for r in rows] == [[3000.0] * 3, [2800.0] * 3, [1000.0] * 3, [950.0] * 3, [850.0, 800.0, 900.0]]
    assert rows[1][4] == pytest.approx(2800 / 3000) and rows[4][4] == pytest.approx(0.85)
    assert rows[4][5] == "0.800-0.900" and rows[2][4:] == [1.0, ""]
    assert "vllm_over_hf" not in rollout.side_by_side({"hf": hf})
    json.dumps(figures)


def test_trl_config_carries_memrls_settings(tmp_path):
    cfg = load_config(None, ["grpo.beta=0.02", "grpo.clip_high=0.28", "grpo.temperature=0.8"])
    args = e2e.trl_config(cfg, steps=5, out_dir=tmp_path)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (32, 2)
    assert args.generation_batch_size == 64 and args.num_generations == 8
    assert (args.beta, args.epsilon, args.epsilon_high) == (0.02, 0.2, 0.28)
    assert (args.loss_type, args.scale_rewards) == ("dapo", "group")
    assert (args.max_completion_length, args.temperature, args.top_k) == (64, 0.8, 0)
    assert args.max_steps == 5 and args.num_iterations == 1 and args.shuffle_dataset is False
    assert (args.use_vllm, args.use_transformers_continuous_batching, args.bf16) == (False, False, False)
    on_vllm = e2e.trl_config(cfg, steps=5, out_dir=tmp_path, setup=e2e.TrlSetup("vllm", 2))
    assert (on_vllm.use_vllm, on_vllm.vllm_mode, on_vllm.vllm_max_model_length) == (True, "colocate",
                                                                          cfg.grpo.max_prompt_length + 64)
    batching = e2e.trl_config(cfg, steps=5, out_dir=tmp_path, setup=e2e.TrlSetup("cb", 2, "bf16"))
    assert (batching.use_transformers_continuous_batching, batching.use_vllm, batching.bf16) == (True, False, True)


def test_trl_config_fields_record_what_decides_trls_speed(tmp_path):
    # TRL 1.16 turns gradient checkpointing on by default; the baseline must not recompute.
    cfg = load_config(None, ["grpo.beta=0.04"])
    args = e2e.trl_config(cfg, steps=5, out_dir=tmp_path)
    assert args.gradient_checkpointing is False
    assert e2e.trl_config_fields(args, torch_threads=2) == {
        "generation_backend": "transformers", "vllm_mode": None, "precision": "fp32", "torch_threads": 2,
        "gradient_checkpointing": False, "reference_model": True, "beta": 0.04}
    on_vllm = e2e.trl_config(load_config(None, ["grpo.beta=0.0"]), steps=5, out_dir=tmp_path,
                             setup=e2e.TrlSetup("vllm", 1))
    fields = e2e.trl_config_fields(on_vllm, torch_threads=1)
    assert (fields["generation_backend"], fields["vllm_mode"], fields["gradient_checkpointing"],
            fields["reference_model"], fields["torch_threads"]) == ("vllm", "colocate", False, False, 1)
    in_bf16 = e2e.trl_config(cfg, steps=5, out_dir=tmp_path, setup=e2e.TrlSetup("cb", 2, "bf16"))
    fields = e2e.trl_config_fields(in_bf16, torch_threads=2)
    assert (fields["generation_backend"], fields["precision"]) == ("transformers continuous batching", "bf16")
    assert "bf16, 2 torch thread(s)" in e2e.describe_trl(fields)


def test_block_eos_leaves_eos_unsamplable():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=40, tie_word_embeddings=True, attention_bias=True)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(8, 40, (4, 24))
    ids[:, 5] = 3  # EOS inside the prompt, as a chat template puts it
    with torch.no_grad():
        before = torch.log_softmax(model(ids).logits, -1)
        e2e.block_eos(model, [3, 7])
        after = torch.log_softmax(model(ids).logits, -1)
    assert before[..., 3].max() > -10  # a random model samples EOS now and then
    # every position but the EOS input's own, those after it too, puts EOS > 100 nats down
    others = torch.arange(24) != 5
    assert after[:, others][..., [3, 7]].max() < -100
    assert torch.isfinite(after).all()
    untied = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, vocab_size=20, tie_word_embeddings=False))
    with pytest.raises(ValueError, match="tied embeddings"):
        e2e.block_eos(untied, [3])


def test_trl_reward_is_memrls_rule_reward():
    from memrl.rewards.registry import RewardComposer
    from memrl.train.setup import build_reward_plan

    cfg = load_config(None, ["method=r1"])
    plan = build_reward_plan(cfg, build_task(cfg))
    records = [Record("a", "What is 3 + 4?", "7"), Record("b", "What is 5 - 2?", "3")]
    reward = e2e.trl_reward(records, RewardComposer(plan.specs), 64)
    right = "<reasoning>\n3 + 4 = 7\n</reasoning>\n<answer>\n7\n</answer>\n"
    wrong = "<reasoning>\n5 - 2 = 4\n</reasoning>\n<answer>\n4\n</answer>\n"
    values = reward(prompts=["p"] * 3, completions=[right, wrong, "I do not know"],
                    completion_ids=[[1] * 12] * 3, record_id=["a", "b", "a"])
    # xmlcount 0.5 + strict 0.5 + integer 0.5 + correctness 1.0; the soft format (re.match,
    # no DOTALL, as the official code) never matches multi-line reasoning
    assert values == pytest.approx([2.5, 1.5, 0.0])


def test_trl_rows_follow_memrls_prompt_stream():
    cfg = load_config(None, [])
    task = build_task(cfg)
    tokenizer = train_bpe_tokenizer([task.system_prompt, "Tom has 3 apples."], 300)
    records, rows = e2e.trl_rows(task, tokenizer, cfg, steps=2)
    expected = PromptStream(task.dataset("train"), seed=cfg.seed).next_batch(2 * cfg.grpo.prompts_per_step)
    assert [r.id for r in records] == [r.id for r in expected]
    assert [row["record_id"] for row in rows] == [r.id for r in expected]
    assert rows[5]["prompt"] == record_prompt(task, tokenizer, expected[5], num_shots=cfg.task.num_shots,
                                              seed=cfg.seed)


def test_step_clock_stamps_training_steps_only(tmp_path):
    from memrl.train import loop

    original = loop.MetricsWriter
    with e2e.StepClock().installed() as clock:
        writer = loop.MetricsWriter(tmp_path, tensorboard=False)
        writer.log(1, {"time/step": 1.0})
        writer.log(1, {"eval/accuracy": 0.5})
        writer.log(2, {"time/step": 1.0})
        writer.close()
    assert len(clock.end_times) == 2 and clock.end_times[0] <= clock.end_times[1]
    assert loop.MetricsWriter is original
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_spot_table_has_one_row_per_fault_its_audit_and_how_each_ended():
    from bench.spot import Outcome, table
    from memrl.audit import KINDS

    audit = {"scheduled": 40, "counts": dict.fromkeys(KINDS, 0) | {"stale": 2}}
    lines = table([Outcome("rollout_lost", "", hit_step=3, steps_completed=10, max_steps=10, work_lost_s=1.94,
                           audit=audit),
                   Outcome("learner_drain", "", hit_step=3, steps_completed=6, max_steps=6,
                           error="Preempted(143)", exit_code=143)]).splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    assert cells[0] == ["scenario", "fault hit step", "steps done", "prompts audited", "lost", "duplicated",
                        "out of order", "stale", "wrong count", "outside schedule", "work lost s", "ended"]
    assert cells[2] == ["rollout_lost", "3", "10/10", "40", "0", "0", "0", "2", "0", "0", "1.9", "ok"]
    assert cells[3][3:5] == ["—", "—"]  # a scenario that crashed before its audit
    assert cells[3][-1] == "exit 143, resumed" and len(lines) == 4
