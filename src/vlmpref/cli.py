"""The `vlmpref` command: a table from sub-command to config class and function.

    vlmpref demo
    vlmpref train --config configs/smolvlm-instruct/dpo-guide.yaml
    vlmpref generate --model runs/tiny --image photo.png --prompt "What is in the image?"
    vlmpref eval --adapter runs/dpo --dataset runs/shapes --split test --output-dir runs/eval
    vlmpref score --answers answers.jsonl --output-dir runs/score
    vlmpref compare runs/eval_base runs/eval --run runs/dpo --output-dir runs/report
    vlmpref data check --dataset runs/demo/data --split test
    vlmpref data synthetic --output-dir runs/shapes
    vlmpref tiny-model --output-dir runs/tiny
    vlmpref estimate --model HuggingFaceTB/SmolVLM-Instruct --gpu rtx-4070
    vlmpref merge --adapter runs/dpo --output-dir runs/dpo-merged
    vlmpref chat --model runs/tiny --adapter runs/dpo --image photo.png
    vlmpref ui --run runs/demo

Each sub-command's options come from its config dataclass; `--config FILE.yaml` supplies them from YAML
and flags override the file. User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

from vlmpref import config as config_io
from vlmpref.errors import VlmprefError
from vlmpref.terminal import make_console


# ---- what each command does


def _cmd_demo(cfg):
    from vlmpref.demo import run_demo

    run_demo(cfg)


def _cmd_train(cfg):
    from vlmpref.train.reporting import interrupted_line, summary_line
    from vlmpref.train.run import train

    callbacks = None
    if cfg.eval_dataset and cfg.eval_steps:
        from vlmpref.eval.during_training import HeldOutEvalCallback

        callbacks = [HeldOutEvalCallback()]  # held-out metrics to eval_log.jsonl and TensorBoard
    result = train(cfg, callbacks=callbacks)
    if not result.main:  # another process of a data-parallel run: the main one reports
        return
    if result.interrupted:  # a clean stop on SIGINT/SIGTERM: exit 0, say how to continue
        print(interrupted_line(result.summary, result.output_dir, result.checkpoint))
        return
    final = {k: v for k, v in result.summary["final_log"].items() if k != "log_history"}
    if final:
        print(json.dumps(final))
    print(summary_line(result.summary, result.output_dir))


def _cmd_generate(cfg):
    from vlmpref.generate import run_generate

    result = run_generate(cfg)
    if isinstance(result, list):
        print(result[0])
    else:
        print(f"Answers written to {result}")


def _cmd_eval(cfg):
    from vlmpref.eval.run import run_eval
    from vlmpref.report.table import print_metrics

    out = run_eval(cfg)
    document = json.loads((out / "metrics.json").read_text())
    print_metrics(document["metrics"], title=f"Evaluation of {document['model']['base']}"
                  + (f" + {document['model']['adapter']}" if document["model"]["adapter"] else ""))
    print(f"metrics.json, samples.jsonl and pope.jsonl written to {out}")


def _cmd_score(cfg):
    from vlmpref.eval.score import run_score
    from vlmpref.report.table import print_metrics

    out = run_score(cfg)
    document = json.loads((out / "metrics.json").read_text())
    print_metrics(document["metrics"], title=f"Hallucination of the {document['model']['base']}")
    print(f"metrics.json, samples.jsonl and pope.jsonl written to {out}")


def _cmd_compare(cfg):
    from vlmpref.report.run import run_compare

    run_compare(cfg)


def _cmd_data_check(cfg):
    from rich.markup import escape

    from vlmpref.data.check import run_check

    processor = policy = None
    if cfg.model:
        from vlmpref.models import load_processor

        processor = load_processor(cfg.model, cfg.trust_remote_code)
    if cfg.max_length:
        from vlmpref.train.lengths import apply_length_policy

        def policy(data):
            apply_length_policy(data, processor, cfg.max_length, cfg.truncation)
    report = run_check(cfg, processor, length_policy=policy)
    console = make_console()
    # escaped: rich would read the split label, "[train]", as a style tag and drop it
    console.print(f"[bold]{escape(report['dataset'])} {escape('[' + report['split'] + ']')}[/]: {report['rows']} "
                  f"rows, {report['rows_used']} usable, {report['rows_set_aside']} set aside"
                  + "".join(f"; {n} {escape(what)}" for what, n in report["rows_kept_with_changes"].items()))
    console.print("columns: " + escape(", ".join(f"{k} ({v})" for k, v in report["columns"].items())), soft_wrap=True)
    for key in ("images", "tokens"):
        if report.get(key):
            console.print(f"{key}: {escape(json.dumps(report[key]))}", soft_wrap=True)
    for row in report["problem_rows"][:50]:
        console.print(f"  row {row['row_id']}: {escape(row['reason'])}", soft_wrap=True)
    if len(report["problem_rows"]) > 50:
        where = f"{cfg.output_dir}/rejected_rows.jsonl" if cfg.output_dir else "--output-dir DIR to write them all"
        console.print(f"  ... and {len(report['problem_rows']) - 50} more ({where})")


def _cmd_synthetic(cfg):
    from vlmpref.data.synthetic import write_synthetic

    print(f"Shapes world written to {write_synthetic(cfg)} (splits: train, test)")


def _cmd_tiny_model(cfg):
    from vlmpref.models.tiny import save_tiny_model

    print(f"Tiny {cfg.architecture} model and processor written to {save_tiny_model(cfg)}")


def _cmd_estimate(cfg):
    from vlmpref.plan.run import run_estimate

    run_estimate(cfg)


def _cmd_merge(cfg):
    from vlmpref.models.merge import merge_adapter

    out = merge_adapter(cfg)
    print(f"Merged checkpoint and processor written to {out}; load it with "
          f"AutoModelForImageTextToText.from_pretrained('{out}')")


def _cmd_chat(cfg):
    from vlmpref.generate.chat import run_chat

    run_chat(cfg)


def _cmd_ui(cfg):
    from vlmpref.ui import run_ui

    run_ui(cfg)


@dataclass
class Command:
    config: Callable[[], type]  # imported lazily so `vlmpref --help` stays quick
    run: Callable
    help: str
    reads_yaml_of: Callable[[], type] | None = None  # another command's config, whose YAML keys it reads past


def _cls(module: str, name: str) -> Callable[[], type]:
    def load():
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


COMMANDS: dict[str, Command] = {
    "demo": Command(_cls("vlmpref.demo", "DemoConfig"), _cmd_demo,
                    "Run the whole pipeline offline on a CPU: shapes world, 4-bit DoRA DPO, before/after table."),
    "train": Command(_cls("vlmpref.train.config", "TrainConfig"), _cmd_train,
                     "DPO-train an adapter (the guide's recipe by default)."),
    "generate": Command(_cls("vlmpref.generate", "GenerateConfig"), _cmd_generate,
                        "Answer a question about an image, or every row of a dataset split."),
    "eval": Command(_cls("vlmpref.eval.run", "EvalConfig"), _cmd_eval,
                    "Evaluate a model (base, or base + adapter) on a split: accuracy, hallucination, relevance, "
                    "preference."),
    "score": Command(_cls("vlmpref.eval.score", "ScoreConfig"), _cmd_score,
                     "Score answers you already have (JSONL: question, answer, objects or POPE label): CHAIR and "
                     "POPE in vlmpref's and the papers' readings, no model."),
    "compare": Command(_cls("vlmpref.report.run", "CompareConfig"), _cmd_compare,
                       "Before/after table and report (HTML, Markdown, plots) from two evaluations."),
    "data check": Command(_cls("vlmpref.data.check", "DataCheckConfig"), _cmd_data_check,
                          "Load a dataset as train would and report rows, images, tokens and problem rows."),
    "data synthetic": Command(_cls("vlmpref.data.synthetic", "SyntheticConfig"), _cmd_synthetic,
                              "Write the shapes world (train and disjoint test splits) with save_to_disk."),
    "tiny-model": Command(_cls("vlmpref.models.tiny", "TinyModelConfig"), _cmd_tiny_model,
                          "Write a tiny random VLM and its processor, offline, in seconds."),
    "estimate": Command(_cls("vlmpref.plan.run", "EstimateConfig"), _cmd_estimate,
                        "Will a training run fit a GPU, and how long will it take? Memory breakdown and time.",
                        reads_yaml_of=_cls("vlmpref.train.config", "TrainConfig")),
    "merge": Command(_cls("vlmpref.models.merge", "MergeConfig"), _cmd_merge,
                     "Merge an adapter into its base and write a plain transformers checkpoint."),
    "chat": Command(_cls("vlmpref.generate.chat", "ChatConfig"), _cmd_chat,
                    "Chat about images in the terminal with a model and an optional adapter, streaming answers."),
    "ui": Command(_cls("vlmpref.ui", "UIConfig"), _cmd_ui,
                  "Local web app: base vs tuned side by side, the evaluation to browse, training to launch and watch."),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2, like VlmprefError."""

    def error(self, message):
        self.exit(2, f"error: {message}; see `{self.prog} --help`.\n")


def _requested(argv: list[str]) -> str | None:
    """The command named on the command line, so only its config class (and its imports) is loaded."""
    words = [a for a in argv if not a.startswith("-")][:2]
    for n in (2, 1):
        if len(words) >= n and " ".join(words[:n]) in COMMANDS:
            return " ".join(words[:n])
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; options are added for `only` (all commands when None)."""
    parser = _Parser(prog="vlmpref", description="Preference-tune (DPO) small vision-language models, and prove "
                     "the gain with a before/after evaluation.", formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, command in COMMANDS.items():
        if " " in name:
            group, leaf = name.split(" ", 1)
            if group not in groups:
                group_parser = sub.add_parser(group, help=f"{group} commands: " + ", ".join(
                    n.split(" ", 1)[1] for n in COMMANDS if n.startswith(group + " ")))
                groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND",
                                                            parser_class=_Parser)
                groups[group].required = True
            p = groups[group].add_parser(leaf, help=command.help, description=command.help)
        else:
            p = sub.add_parser(name, help=command.help, description=command.help)
        p.set_defaults(_command=name)
        if only is None or only == name:
            config_io.add_arguments(p, command.config())
    return parser


def _nearest_option(parser: argparse.ArgumentParser, command: str | None, flag: str) -> str:
    """", did you mean --x?" for a mistyped flag, from the options of the command in use."""
    import difflib

    options: list[str] = []
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            options += [o for o in action.option_strings if o.startswith("--")]
            if isinstance(action, argparse._SubParsersAction):
                stack += list(action.choices.values())
    near = difflib.get_close_matches(flag.split("=")[0], options, n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def _quiet_libraries():
    """Keep the terminal for progress and results; library chatter goes to the log level WARNING+ only."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*use_reentrant.*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # already imported (by a caller of main): set its level directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    else:  # read when transformers is first imported, so `--help` need not import it
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _report_in_one_of_several_processes(exc: VlmprefError) -> int:
    """A user error under accelerate launch / torchrun: said once, by the main process, when every process met it
    (the launcher stops the others as soon as one exits, so the main process must not be the last to speak)."""
    import time

    import torch

    from vlmpref.train.processes import ReportedByMain, finish_together

    rank = os.environ.get("RANK", "0")
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    if isinstance(exc, ReportedByMain):  # the main process printed it
        finish_together()
    elif getattr(exc, "everywhere", False):
        print(f"error: {exc}", file=sys.stderr, flush=True)
        finish_together()
    elif not grouped:  # before the processes met (options, config): the same in every one of them
        if rank == "0":
            print(f"error: {exc}", file=sys.stderr, flush=True)
        else:
            time.sleep(10)  # the main process exits first and the launcher then stops this one
    else:  # this process's own problem (its GPU's memory, say)
        print(f"error (process {rank}): {exc}", file=sys.stderr, flush=True)
    return 2


def launched_processes() -> int:
    """Processes started by accelerate launch / torchrun (1 without a launcher); see train/processes.py."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def main(argv: list[str] | None = None) -> int:
    argv = config_io.normalize_flags(sys.argv[1:] if argv is None else list(argv))
    _quiet_libraries()
    requested = _requested(argv)
    parser = build_parser(only=requested or "")
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.exit(2, f"error: unknown option {unknown[0]}{_nearest_option(parser, requested, unknown[0])}; "
                       f"see `vlmpref {requested or ''} --help`.\n".replace("  ", " "))
    args = vars(namespace)
    name = args.pop("_command", None)
    args.pop("command", None)
    args.pop("subcommand", None)
    if name is None:
        parser.print_help()
        return 2
    command = COMMANDS[name]
    try:
        yaml_path = args.pop("config", None)
        borrowed = command.reads_yaml_of() if command.reads_yaml_of else None
        cfg = config_io.resolve(command.config(), flags=args, yaml_path=yaml_path, borrowed_from=borrowed)
        command.run(cfg)
    except VlmprefError as exc:
        if launched_processes() == 1:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _report_in_one_of_several_processes(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
