"""The `edgekit` command group. Subcommands load lazily, so `edgekit --help` imports no framework."""

from __future__ import annotations

import importlib
from typing import Any

import click

from edgekit import __version__

__all__ = ["cli"]

# name -> (module, attribute, one-line help); modules import only when the command runs or shows help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": (
        "edgekit.commands.convert",
        "convert",
        "Export a model to ONNX or TFLite and prove fp32 parity.",
    ),
    "quantize": (
        "edgekit.commands.quantize",
        "quantize",
        "Quantize to int8/fp16 behind the parity gate, with repair.",
    ),
    "parity": ("edgekit.commands.parity", "parity", "Compare any two models under the parity contract."),
    "keygen": ("edgekit.commands.bundle", "keygen", "Create an ECDSA P-256 signing key pair."),
    "bundle": ("edgekit.commands.bundle", "bundle", "Build, sign and write a deterministic .ekb bundle."),
    "sign": ("edgekit.commands.bundle", "sign", "Add a signature to a bundle (k-of-n)."),
    "verify": ("edgekit.commands.bundle", "verify", "Verify a bundle against pinned public keys."),
    "deploy": (
        "edgekit.commands.deploy",
        "deploy",
        "Production deployment files: nginx-config (nginx in front of edgekit serve).",
    ),
    "inspect": ("edgekit.commands.bundle", "inspect", "Show a bundle's manifest, files, runtime and parity."),
    "preprocess": (
        "edgekit.commands.preprocess",
        "preprocess",
        "Preprocessing specs: init (from flags or a model), import (from Hugging Face).",
    ),
    "repo": ("edgekit.commands.repo", "repo", "The TUF repository: init, publish, rotate-root, status."),
    "publish": ("edgekit.commands.repo", "publish", "Verify a bundle and publish it as a TUF target."),
    "serve": (
        "edgekit.commands.serve",
        "serve",
        "Run the rollout server: TUF repo, telemetry, gates, dashboard.",
    ),
    "rollout": (
        "edgekit.commands.rollout",
        "rollout",
        "Phased rollouts: start, status, watch, evaluate, pause, resume, abort, promote.",
    ),
    "simulate": (
        "edgekit.commands.simulate",
        "simulate",
        "Simulate phased rollouts of a fleet through the real gates.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Remembered before parsing, so even a usage error of a subcommand answers in JSON under --json.
        ctx.meta[_JSON_KEY] = "--json" in args[: args.index("--") if "--" in args else len(args)]
        ctx.meta[_PATH_KEY] = _command_words(self, ctx, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; under `--json` a failure is a JSON document on stdout (see _common)."""
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            if not ctx.meta.get(_JSON_KEY):
                raise
            from edgekit.commands._common import echo_json, error_document

            echo_json(error_document(e, ctx.meta.get(_PATH_KEY, "")))
            ctx.exit(e.exit_code)


_JSON_KEY = "edgekit.json"
_PATH_KEY = "edgekit.command"


def _command_words(group: click.Group, ctx: click.Context, args: list[str]) -> str:
    """`rollout watch` for `rollout --server X watch ID --json`: the leading words naming a (sub)command."""
    words: list[str] = []
    command: click.Command | None = group
    for arg in args:
        if not isinstance(command, click.Group):
            break
        if arg.startswith("-"):
            continue
        # An option's value is skipped like a word that names no subcommand.
        if arg in COMMANDS if command is group else arg in command.commands:
            words.append(arg)
            command = group.get_command(ctx, arg) if command is group else command.commands[arg]
    return " ".join(words)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors (for bug reports).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgekit: convert, quantize, sign and roll out ML models to edge devices, safely."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(args: list[str] | None = None) -> Any:
    """Run the CLI (for `python -m edgekit`)."""
    return cli.main(args=args)
