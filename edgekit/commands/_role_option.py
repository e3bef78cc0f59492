"""The `--role OUTPUT=ROLE[,key=value...]` option of `parity`, `quantize` and `preprocess init`.

One help text for the three commands, naming the roles a device knows (`OUTPUT_KINDS`, defined once in
`device_runtime._roles`, which imports nothing) and the keys `converters.roles.parse_role_option` reads.
The keys are listed here rather than imported: `converters.roles` loads numpy, and `--help` stays light
(a test pins the two lists equal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from device_runtime._roles import OUTPUT_KINDS

__all__ = ["ROLE_KEY_NAMES", "ROLE_METAVAR", "ROLE_NAMES", "role_option"]

F = TypeVar("F", bound=Callable[..., object])

ROLE_METAVAR = "OUTPUT=ROLE[,key=value...]"
ROLE_NAMES = ", ".join(OUTPUT_KINDS)
ROLE_KEY_NAMES = ("score", "iou", "max", "format", "scores", "top_k", "activation", "axis", "blank")


def role_option(lead: str, *, example: str, tail: str = "") -> Callable[[F], F]:
    """A repeatable `--role` option (stored as `roles`) whose help names every role and key.

    `lead`: what the option does on this command; `example`: one OUTPUT=ROLE value; `tail`: what else
    this command does with it (one sentence, or empty).
    """
    text = (
        f"{lead} ROLE is one of {ROLE_NAMES}; optional keys: {', '.join(ROLE_KEY_NAMES)}; "
        f"e.g. {example}. Repeatable."
    )
    return click.option(
        "--role",
        "roles",
        multiple=True,
        metavar=ROLE_METAVAR,
        help=f"{text} {tail}".strip(),
    )
