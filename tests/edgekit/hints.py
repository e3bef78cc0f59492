"""Which `--option` names a CLI text mentions, and whether the command that prints it has them.

Used by the static scan (tests/edgekit/test_cli_hints.py) and by the check every CliRunner test runs
(tests/conftest.py). Options quoted in backticks are another command's (`edgekit quantize --mode fp16`)
and are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import click

OPTION = re.compile(r"(?<![\w`/-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
QUOTED = re.compile(r"`[^`]*`")


def mentioned_options(text: str) -> set[str]:
    """Every `--option` in `text`, outside backtick quotes."""
    return set(OPTION.findall(QUOTED.sub("", text)))


def command_options(command: click.Command) -> set[str]:
    """The options of a command and, for a group, of every subcommand (plus --help)."""
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            if sub is not None:
                names |= command_options(sub)
    return names


def resolve_command(args: Iterable[str]) -> tuple[str, click.Command] | None:
    """The edgekit subcommand an argument list invokes (None for the bare group)."""
    from edgekit.cli import cli

    context = click.Context(cli)
    for arg in args:
        if arg.startswith("-"):
            continue
        command = cli.get_command(context, str(arg))
        return (str(arg), command) if command is not None else None
    return None


def unknown_options(args: Iterable[str], output: str) -> set[str]:
    """Options the output names that the invoked command does not have."""
    from edgekit.cli import cli

    args = [str(a) for a in args]
    resolved = resolve_command(args)
    available = (
        command_options(cli)
        if resolved is None
        else command_options(resolved[1])
        | {o for p in cli.params if isinstance(p, click.Option) for o in p.opts}
    )
    typed = {a.split("=", 1)[0] for a in args if a.startswith("--")}  # click echoes what the user typed
    return mentioned_options(output) - available - typed
