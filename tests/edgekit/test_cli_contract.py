"""The CLI's contract, checked over the whole click tree: `--json` on every command, help on every option,
group listings that name exactly what exists, `--help` with an empty environment, and one JSON shape."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgekit.cli import COMMANDS, cli
from edgekit.commands._common import JSON_SHAPE, json_help

ROOT = Path(__file__).resolve().parents[2]


def walk(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under `group` (groups included)."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{' '.join((*path, name))} is listed but does not load"
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from walk(command, click.Context(command, parent=ctx, info_name=name), (*path, name))


def resolve(path: tuple[str, ...]) -> click.Command:
    ctx = click.Context(cli, info_name="edgekit")
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(ctx, name)
        assert found is not None
        ctx = click.Context(found, parent=ctx, info_name=name)
        command = found
    return command


PATHS = list(walk(cli, click.Context(cli, info_name="edgekit")))
LEAVES = [p for p in PATHS if not isinstance(resolve(p), click.Group)]
GROUPS = [p for p in PATHS if isinstance(resolve(p), click.Group)]


def test_the_tree_holds_every_command_the_issue_names() -> None:
    names = {" ".join(p) for p in PATHS}
    expected = {
        "keygen",
        "sign",
        "serve",
        "repo init",
        "repo rotate-root",
        "rollout watch",
        "preprocess init",
    }
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_command_that_produces_a_result_takes_json(path: tuple[str, ...]) -> None:
    options = {o for p in resolve(path).params if isinstance(p, click.Option) for o in p.opts}
    assert "--json" in options


# Every --json help is `json_help(what, per_line=...)`: the template with the one varying part as a wildcard.
_TEMPLATES = [json_help("\0", per_line=lines) for lines in (False, True)]
JSON_HELP_PATTERN = re.compile("|".join(re.escape(t).replace("\0", ".+") for t in _TEMPLATES))


@pytest.mark.parametrize("path", LEAVES, ids=[" ".join(p) for p in LEAVES])
def test_every_json_help_names_the_shared_shape_in_one_wording(path: tuple[str, ...]) -> None:
    (flag,) = [p for p in resolve(path).params if isinstance(p, click.Option) and "--json" in p.opts]
    assert JSON_HELP_PATTERN.fullmatch(flag.help or ""), (
        f"{' '.join(path)} --json: {flag.help!r}; use json_option or json_flag() of edgekit.commands._common"
    )
    assert JSON_SHAPE in (flag.help or "") and (flag.help or "").endswith("errors too.")


@pytest.mark.parametrize("path", [(), *PATHS], ids=["edgekit", *(" ".join(p) for p in PATHS)])
def test_every_command_and_option_has_help(path: tuple[str, ...]) -> None:
    command = resolve(path)
    assert (command.help or command.short_help or "").strip(), f"{path}: no help"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]}: blank help"


def _listed(text: str) -> list[str]:
    """`Phased rollouts: start, status, watch.` -> the first word of each comma-separated item."""
    _, _, tail = text.partition(":")
    return [item.strip().split()[0].rstrip(".") for item in tail.split(",") if item.strip()]


@pytest.mark.parametrize("path", GROUPS, ids=[" ".join(p) for p in GROUPS])
def test_group_help_names_exactly_the_subcommands_that_exist(path: tuple[str, ...]) -> None:
    group = resolve(path)
    assert isinstance(group, click.Group)
    exists = set(group.commands)
    own = re.split(r"\.(?:\s|$)", (group.help or "").replace("\n", " "))[0]
    assert set(_listed(own)) == exists, own
    if len(path) == 1:
        assert set(_listed(COMMANDS[path[0]][2])) == exists, COMMANDS[path[0]][2]


def test_the_top_level_help_lists_exactly_the_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = re.findall(r"^  (\S+)\s", result.output.split("Commands:")[1], flags=re.MULTILINE)
    assert listed == sorted(COMMANDS)


def test_help_works_with_an_empty_environment(tmp_path: Path) -> None:
    """No token, no server, no model: every --help exits 0 (one process per command, env emptied)."""
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin", "HOME": str(tmp_path)}
    failures = []
    for path in [(), *PATHS]:
        result = subprocess.run(
            [sys.executable, "-m", "edgekit", *path, "--help"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0 or "Usage:" not in result.stdout:
            failures.append((path, result.returncode, result.stderr[-500:]))
    assert not failures, failures
    assert not any(tmp_path.iterdir()), "--help wrote into HOME"


def test_json_success_and_failure_share_one_shape(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["keygen", "-o", str(tmp_path), "--json"])
    assert made.exit_code == 0, made.output
    document = json.loads(made.stdout)
    assert document["ok"] is True and document["command"] == "keygen"
    assert Path(document["public_key"]).is_file() and len(document["key_id"]) > 8
    again = runner.invoke(cli, ["keygen", "-o", str(tmp_path), "--json"])
    failure = json.loads(again.stdout)
    assert again.exit_code == 1
    assert failure["ok"] is False and failure["command"] == "keygen"
    assert set(failure["error"]) == {"code", "message", "hint"} and failure["error"]["message"]
    usage = runner.invoke(cli, ["rollout", "status", "--json"], env={"EDGEKIT_ADMIN_TOKEN": ""})
    assert usage.exit_code == 2
    assert json.loads(usage.stdout)["error"] == {
        "code": "UsageError",
        "message": "no admin token: set $EDGEKIT_ADMIN_TOKEN or pass --token-file",
        "hint": None,
    }


def test_an_unreachable_server_is_one_json_error_naming_the_server_option() -> None:
    result = CliRunner().invoke(
        cli,
        ["rollout", "--server", "http://127.0.0.1:9", "status", "--json"],
        env={"EDGEKIT_ADMIN_TOKEN": "t"},
    )
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and document["command"] == "rollout status"
    assert document["error"]["code"] == "Unreachable" and "--server" in document["error"]["hint"]


def test_keygen_bundle_sign_and_verify_answer_in_json(tmp_path: Path) -> None:
    import numpy as np

    from tests.device_runtime.test_device_cli import tiny_onnx

    model = tiny_onnx(tmp_path / "m.onnx", np.ones((8, 4), dtype=np.float32))
    runner, keys, bundle = CliRunner(), tmp_path / "keys", tmp_path / "m.ekb"
    for name in ("release", "second"):
        assert runner.invoke(cli, ["keygen", "-o", str(keys), "--name", name, "--json"]).exit_code == 0
    built = runner.invoke(
        cli,
        ["bundle", str(model), "-o", str(bundle), "--name", "m", "--version", "1.0.0", "--key",
         str(keys / "release.key"), "--json"],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["command"] == "bundle" and json.loads(built.stdout)["path"] == str(bundle)
    signed = runner.invoke(cli, ["sign", str(bundle), "--key", str(keys / "second.key"), "--json"])
    assert signed.exit_code == 0, signed.output
    assert json.loads(signed.stdout)["signatures"] == 2
    verified = runner.invoke(
        cli,
        ["verify", str(bundle), "--pubkey", str(keys / "release.pub"), "--pubkey", str(keys / "second.pub"),
         "--threshold", "2", "--json"],
    )  # fmt: skip
    document = json.loads(verified.stdout)
    assert document["ok"] is True and document["verified"] is True and len(document["signers"]) == 2
