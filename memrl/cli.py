"""The ``memrl`` command line: train, audit, inspect configs and memories.

Heavy imports (torch, ray, sentence-transformers) happen inside the command that needs them,
so ``memrl --help`` and ``memrl config show`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memrl.config import MAX_ROLLOUT_WORKERS, ConfigError, config_to_yaml, load_config
from memrl.errors import EXIT_INPUT, InputError, debug_enabled, error_log, explain, write_traceback
from memrl.terminal import show_memrl_warnings

EXIT_CONFIG_ERROR = EXIT_INPUT


def _split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument is the YAML file unless it looks like an override (contains ``=``)."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _cmd_config_show(ns: argparse.Namespace) -> int:
    path, overrides = _split_config_args(ns.args)
    cfg = load_config(path, overrides)
    sys.stdout.write(config_to_yaml(cfg))
    return 0


def _cmd_plan(ns: argparse.Namespace) -> int:
    from memrl.plan import main_plan

    path, overrides = _split_config_args(ns.args)
    return main_plan(load_config(path, overrides), address=ns.address,
                     gpu_memory_gib=ns.gpu_memory_gib)


def _cmd_config_docs(ns: argparse.Namespace) -> int:
    from memrl.config_docs import DOCS_PATH, write_reference

    print(f"wrote {write_reference(Path(ns.out) if ns.out else DOCS_PATH)}")
    return 0


def _cmd_train(ns: argparse.Namespace) -> int:
    if ns.dry_run:
        return _cmd_plan(argparse.Namespace(args=ns.args, address=None, gpu_memory_gib=None))
    path, overrides = _split_config_args(ns.args)
    if ns.verbose:
        overrides = [*overrides, "logging.verbose=true"]
    cfg = load_config(path, overrides)
    print(f"memrl: training {cfg.model.name_or_path} with {cfg.method} on {cfg.task.name} for "
          f"{cfg.trainer.max_steps} steps; run directory {cfg.output_dir}", file=sys.stderr, flush=True)
    from memrl.train.loop import run_training

    summary = run_training(cfg, resume=ns.resume, quiet=not cfg.logging.verbose)
    print(f"done: {summary['steps']} steps in {summary['wall_seconds']:.0f} s; {_accuracy_text(summary)}; "
          f"run dir {cfg.output_dir}")
    return 0


def _accuracy_text(summary: dict) -> str:
    """The result line's accuracy: before -> after under both graders, or why there is none."""
    if "accuracy_after" not in summary:
        return "evaluation was off (trainer.eval_before_after=false, trainer.eval_every_steps=0)"
    nan = float("nan")
    before = "not measured" if "accuracy_before" not in summary else f"{summary['accuracy_before']:.3f}"
    lenient_before = "not measured" if "accuracy_lenient_before" not in summary else \
        f"{summary['accuracy_lenient_before']:.3f}"
    return (f"accuracy {before} -> {summary['accuracy_after']:.3f} (lenient grader {lenient_before} -> "
            f"{summary.get('accuracy_lenient_after', nan):.3f})")


def _cmd_build_base(ns: argparse.Namespace) -> int:
    from memrl.model.recipe import tiny_base_recipe
    from memrl.model.warmstart import cached_tiny_model
    from memrl.tasks import build_task

    path, overrides = _split_config_args(ns.args)
    cfg = load_config(path, overrides)
    if cfg.model.name_or_path != "tiny":
        raise ConfigError(f"model.name_or_path is {cfg.model.name_or_path!r}: memrl build-base builds "
                          "the offline tiny model (model.name_or_path=tiny) only")
    recipe = tiny_base_recipe(cfg, build_task(cfg))
    folder = cached_tiny_model(Path(ns.out), recipe.spec, recipe.texts, recipe.examples,
                               recipe.habit_examples, use_shipped=False)
    print(folder)
    return 0


def _cmd_scale(ns: argparse.Namespace) -> int:
    from memrl.actors.control import scale_via_job
    from memrl.cluster.capacity import parse_worker_count

    try:
        parse_worker_count(ns.num_workers, key="memrl scale NUM_WORKERS")
    except ValueError as exc:
        raise InputError(str(exc), where="the command line",
                         hint="give a whole number >= 1 or auto") from exc
    answer = scale_via_job(ns.address, ns.run, ns.num_workers)
    if "error" in answer:
        print(f"memrl scale: {answer['error']}", file=sys.stderr)
        return 1
    running = f"; {answer['running']} running, step {answer['step']}" if "step" in answer else ""
    capped = (f" (the run caps a count at what its cluster can ever place, at most {MAX_ROLLOUT_WORKERS}, "
              "and says so)" if isinstance(answer["requested"], int) and answer["requested"] > MAX_ROLLOUT_WORKERS
              else "")
    print(f"run {answer['run']}: rollout.num_workers -> {answer['requested']} from its next "
          f"step{capped}{running}")
    return 0


def _cmd_memory_inspect(ns: argparse.Namespace) -> int:
    from memrl.memory.inspection import inspect_snapshot

    print(inspect_snapshot(Path(ns.snapshot_dir), query=ns.query, k=ns.k))
    return 0


def _cmd_eval(ns: argparse.Namespace) -> int:
    from memrl.eval.cli import main_eval

    return main_eval(ns)


def _cmd_compare(ns: argparse.Namespace) -> int:
    from memrl.compare import run_compare

    path, overrides = _split_config_args(ns.args)
    if ns.eval_every and not any(o.startswith("trainer.eval_every_steps=") for o in overrides):
        overrides = [*overrides, f"trainer.eval_every_steps={ns.eval_every}"]
    try:
        seeds = [int(s) for s in ns.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {ns.seeds!r}: expected comma-separated integers") from None
    methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
    out = Path(ns.out or "runs/compare")
    run_compare(path, overrides, methods, seeds, out, target=ns.target)
    return 0


def _cmd_report(ns: argparse.Namespace) -> int:
    from memrl.report.cli import main_report

    return main_report(ns.run_dirs, ns.out, ns.format, ns.smooth)


def _cmd_audit(ns: argparse.Namespace) -> int:
    from memrl.audit import main_audit

    return main_audit(ns.run_dir, as_json=ns.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memrl",
        description="Memory-R+ reinforcement learning for small language models on Ray.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="on failure, print the full traceback too (also: MEMRL_DEBUG=1); "
                             "it is always written to a log file, named in the message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a policy with GRPO (+ episodic memory rewards)",
        description="memrl train [CONFIG.yaml] [dotted.key=value ...]; "
        "with no CONFIG, configs/default.yaml (tiny offline model, arith task).",
    )
    train.add_argument("args", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    train.add_argument(
        "--resume",
        default="none",
        help="'auto': continue from OUTPUT_DIR/checkpoints/latest if present, else start fresh; "
        "'none' (default): start fresh; or a checkpoint directory",
    )
    train.add_argument("--dry-run", action="store_true",
                       help="check the job instead of running it (memrl plan)")
    train.add_argument("--verbose", action="store_true",
                       help="also show the libraries' and actors' output (logging.verbose=true); "
                            "by default it goes to OUTPUT_DIR/logs/ and the terminal shows memrl's lines")
    train.set_defaults(func=_cmd_train)

    scale = sub.add_parser(
        "scale",
        help="change a running job's rollout.num_workers (a number or auto)",
        description="memrl scale NUM_WORKERS [--run OUTPUT_DIR] [--address URL]: reaches the "
        "running driver through the Ray Jobs API, with the address and token that `ray job "
        "submit` uses (RAY_ADDRESS, RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH).",
    )
    scale.add_argument("num_workers", metavar="NUM_WORKERS", help="a whole number >= 1, or auto")
    scale.add_argument("--run", default=None, metavar="OUTPUT_DIR",
                       help="the run's output_dir as configured (default: the only memrl run)")
    scale.add_argument("--address", default=None,
                       help="the Jobs API address, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    scale.set_defaults(func=_cmd_scale)

    plan = sub.add_parser(
        "plan", help="dry run: can this job be placed and loaded? (exit 2 naming the problem)",
        description="memrl plan [CONFIG.yaml] [dotted.key=value ...]: resolve the config, check "
        "actor placement on the cluster, model/tokenizer/datasets, the checkpoint URI, and "
        "estimate memory per actor, in seconds.",
    )
    plan.add_argument("args", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    plan.add_argument("--address", default=None,
                      help="Ray cluster to check against (default: ray.address, RAY_ADDRESS, "
                           "else the local cluster memrl train would start)")
    plan.add_argument("--gpu-memory-gib", type=float, default=None,
                      help="memory of one GPU for the estimates (default: this machine's GPU, "
                           "else 80)")
    plan.set_defaults(func=_cmd_plan)

    evaluate = sub.add_parser(
        "eval", help="greedy accuracy (and sampled pass@k) of a model on a task",
        description="memrl eval MODEL_OR_RUN [--task TASK] [--split] [--limit N] [--pass-k K]",
    )
    from memrl.eval.cli import add_eval_arguments

    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_eval)

    compare = sub.add_parser(
        "compare", help="train every method x seed and compare accuracy, efficiency, collapse",
        description="memrl compare [CONFIG.yaml] [key=value ...] --methods r1,cosine,memoryr,memoryr+ "
        "--seeds 0,1,2",
    )
    compare.add_argument("args", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    compare.add_argument("--methods", default="r1,cosine,memoryr,memoryr+")
    compare.add_argument("--seeds", default="0,1,2")
    compare.add_argument("--out", default=None, help="output folder (default: runs/compare)")
    compare.add_argument("--target", type=float, default=None,
                         help="accuracy for sample efficiency (default: start + 0.05)")
    compare.add_argument("--eval-every", type=int, default=10,
                         help="evaluate every N steps (trainer.eval_every_steps; 0: before/after only)")
    compare.set_defaults(func=_cmd_compare)

    build = sub.add_parser(
        "build-base", help="build the config's offline tiny base model (tokenizer + warm start)",
        description="memrl build-base [CONFIG.yaml] [key=value ...] --out DIR: builds into "
        "DIR/<spec key> even where memrl ships that base. `memrl build-base --out "
        "memrl/model/bases` rebuilds the shipped default base, `memrl build-base configs/sparse.yaml "
        "--out memrl/model/bases` the sparse setting's.",
    )
    build.add_argument("args", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    build.add_argument("--out", required=True, help="folder that receives the base's folder")
    build.set_defaults(func=_cmd_build_base)

    report = sub.add_parser("report", help="plots, summary table and collapse checks of runs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", default=None, help="output folder (default: first RUN_DIR/report)")
    report.add_argument("--format", choices=("md", "html"), default="md")
    report.add_argument("--smooth", type=int, default=1, help="moving-average window in steps (1: off)")
    report.set_defaults(func=_cmd_report)

    audit = sub.add_parser(
        "audit", help="check that a run trained every scheduled prompt exactly once (exit 1 if not)",
        description="memrl audit RUN_DIR: compares the run's prompt ledger (ledger.jsonl) with its "
        "prompt stream replayed from config.yaml; prints the lost, duplicated, out-of-order, "
        "stale, wrong-count and outside-schedule prompts with the first step of each. Exit 0: "
        "clean; 1: any count is not 0; 2: the run directory cannot be read.",
    )
    audit.add_argument("run_dir", metavar="RUN_DIR")
    audit.add_argument("--json", action="store_true", help="print the result as JSON")
    audit.set_defaults(func=_cmd_audit)

    config = sub.add_parser("config", help="inspect configurations")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("args", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    show.set_defaults(func=_cmd_config_show)
    docs = config_sub.add_parser(
        "docs", help="write the configuration reference generated from the config's descriptions"
    )
    docs.add_argument("--out", default=None,
                      help="output file (default: docs/configuration.md of this checkout)")
    docs.set_defaults(func=_cmd_config_docs)

    memory = sub.add_parser("memory", help="inspect episodic-memory snapshots")
    memory_sub = memory.add_subparsers(dest="memory_command", required=True, metavar="ACTION")
    inspect = memory_sub.add_parser(
        "inspect", help="sizes, value-count histogram, and nearest keys for a query"
    )
    inspect.add_argument("snapshot_dir")
    inspect.add_argument("--query", default=None, help="question text to look up")
    inspect.add_argument("--k", type=int, default=3, help="nearest keys to show")
    inspect.set_defaults(func=_cmd_memory_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; any failure ends in memrl's few-line message and exit code (2: bad
    input, 1: runtime fault), the full traceback in a log file (see :mod:`memrl.errors`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere, e.g. `memrl train --debug`
    parser = build_parser()
    ns = parser.parse_args([a for a in argv if a != "--debug"])
    error_log.use_run_dir(None)  # a run sets it once it owns its directory
    show_memrl_warnings()  # as `memrl: ...` lines, like memrl's others
    try:
        return ns.func(ns)
    except (Exception, KeyboardInterrupt) as exc:  # SystemExit (preemption) passes through
        return _report(exc, argv, debug_enabled(debug))


def _report(exc: BaseException, argv: list[str], debug: bool) -> int:
    message, code = explain(exc)
    if isinstance(exc, ConfigError) and not debug:  # one line naming the key says it all
        print(f"memrl: {message}", file=sys.stderr)
        return code
    log_path = write_traceback(exc, argv)
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    print(f"memrl: {message}", file=sys.stderr)
    if log_path is not None:
        print(f"  full traceback: {log_path}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
