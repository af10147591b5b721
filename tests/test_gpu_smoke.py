"""bench/gpu_smoke.py on a machine without a GPU: CUDA parts skipped with a reason, the rest runs."""

from __future__ import annotations

import json

import torch

from bench import gpu_smoke


def test_smoke_runs_what_it_can_and_skips_cuda_parts(tmp_path, capsys):
    out = tmp_path / "smoke.json"
    code = gpu_smoke.main(["--json", str(out), "--only", "gpu_tests", "one_gpu_plan", "paper_5_steps",
                           "paper_archs", "weight_sync", "vllm_tokens"])
    parts = {p["name"]: p for p in json.loads(out.read_text())["parts"]}
    printed = capsys.readouterr().out
    assert code == 0
    assert parts["one_gpu_plan"]["status"] == "ok"  # the one-GPU layout fits one 80 GiB device
    assert parts["one_gpu_plan"]["figures"]["learner"]["bundle"]["GPU"] == 0.5
    if not torch.cuda.is_available():
        for name in ("gpu_tests", "paper_5_steps", "paper_archs", "weight_sync", "vllm_tokens"):
            assert parts[name]["status"] == "skipped" and "no CUDA GPU" in parts[name]["summary"]
            assert f"{name}" in printed
        assert "qwen2, llama3, falcon3" in parts["paper_archs"]["summary"]
