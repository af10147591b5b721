"""The ``memrl`` command line: train, inspect configs and memories.

Heavy imports (torch, ray, sentence-transformers) happen inside the command that needs them,
so ``memrl --help`` and ``memrl config show`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memrl.config import ConfigError, config_to_yaml, load_config

EXIT_CONFIG_ERROR = 2


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


def _cmd_train(ns: argparse.Namespace) -> int:
    path, overrides = _split_config_args(ns.args)
    cfg = load_config(path, overrides)
    from memrl.train import run_training

    summary = run_training(cfg, resume=ns.resume)
    print(
        f"done: {summary['steps']} steps in {summary['wall_seconds']:.0f} s; "
        f"accuracy {summary.get('accuracy_before', float('nan')):.3f} -> "
        f"{summary.get('accuracy_after', float('nan')):.3f}; run dir {cfg.output_dir}"
    )
    return 0


def _cmd_memory_inspect(ns: argparse.Namespace) -> int:
    from memrl.memory.inspect import inspect_snapshot

    print(inspect_snapshot(Path(ns.snapshot_dir), query=ns.query, k=ns.k))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memrl",
        description="Memory-R+ reinforcement learning for small language models on Ray.",
    )
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
    train.set_defaults(func=_cmd_train)

    config = sub.add_parser("config", help="inspect configurations")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("args", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    show.set_defaults(func=_cmd_config_show)

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
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return ns.func(ns)
    except ConfigError as exc:
        print(f"memrl: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
