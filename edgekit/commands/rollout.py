"""`edgekit rollout start|status|pause|resume|abort|promote|evaluate`: the admin API from the terminal."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import echo_json


def _call(ctx: click.Context, method: str, path: str, body: Any = None) -> Any:
    server, token = ctx.obj["server"], ctx.obj["token"]
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.rstrip('/')}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail") or e.reason
        except ValueError:
            detail = e.reason
        raise click.ClickException(f"server answered {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        raise click.ClickException(f"cannot reach {server}: {getattr(e, 'reason', e)}") from None


@click.group()
@click.option("--server", default="http://127.0.0.1:8080", show_default=True, envvar="EDGEKIT_SERVER")
@click.option(
    "--token-env",
    default="EDGEKIT_ADMIN_TOKEN",
    show_default=True,
    help="Environment variable holding the admin token.",
)
@click.option(
    "--token-file", type=click.Path(path_type=Path), help="Or a file holding it (DATA/keys/admin.token)."
)
@click.pass_context
def rollout(ctx: click.Context, server: str, token_env: str, token_file: Path | None) -> None:
    """Phased rollouts: start, watch, pause, resume, abort, promote."""
    token = token_file.read_text().strip() if token_file else os.environ.get(token_env, "")
    if not token:
        raise click.UsageError(f"no admin token: set ${token_env} or pass --token-file")
    ctx.obj = {"server": server, "token": token, **(ctx.obj or {})}


@rollout.command()
@click.option("--model", required=True)
@click.option("--channel", default="stable", show_default=True)
@click.option("--target", "target_version", required=True, help="Version to roll out.")
@click.option("--baseline", "baseline_version", required=True, help="Version the fleet runs now.")
@click.option("--stages", default="1,5,25,100", show_default=True, help="Stage percentages.")
@click.option("--no-control", is_flag=True, help="No concurrent control group (not recommended).")
@click.option(
    "--shadow-stage",
    "shadow_stages",
    type=int,
    multiple=True,
    help="A stage percent (repeatable) in which the treatment runs the target in shadow instead of "
    "serving it; the control runs the baseline in shadow alike.",
)
@click.option(
    "--shadow-sample",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.1,
    show_default=True,
    help="Share of live inferences also run through the shadow model (with --shadow-stage).",
)
@click.option(
    "--shadow-max-cpu",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.2,
    show_default=True,
    help="Shadow time at most this share of the active model's inference time (with --shadow-stage).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def start(
    ctx: click.Context,
    model: str,
    channel: str,
    target_version: str,
    baseline_version: str,
    stages: str,
    no_control: bool,
    shadow_stages: tuple[int, ...],
    shadow_sample: float,
    shadow_max_cpu: float,
    as_json: bool,
) -> None:
    """Start rolling TARGET out over BASELINE (with --shadow-stage: shadowing it first in those stages)."""
    try:
        parsed = [int(s) for s in stages.split(",")]
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 1,5,25,100", param_hint="--stages") from None
    body: dict[str, Any] = {
        "model": model,
        "channel": channel,
        "target_version": target_version,
        "baseline_version": baseline_version,
        "stages": parsed,
        "control": not no_control,
    }
    if shadow_stages:
        body["shadow"] = {
            "stages": sorted(set(shadow_stages)),
            "sample": shadow_sample,
            "max_cpu": shadow_max_cpu,
        }
    result = _call(ctx, "POST", "/v1/admin/rollouts", body)
    if as_json:
        echo_json(result)
    else:
        plan = result["plan"]
        click.echo(
            f"started {plan['rollout_id']}: {model} {target_version} over {baseline_version}, "
            f"stage {result['stage_percent']}%"
        )


def _print(entry: dict[str, Any], decisions: int) -> None:
    plan = entry["plan"]
    ladder = " -> ".join(
        f"[{s}%]" if i == plan["stage_index"] else f"{s}%" for i, s in enumerate(plan["stages"])
    )
    shadow = plan.get("shadow")
    click.echo(
        f"{plan['rollout_id']}  {plan['model']} {plan['target']['version']} over "
        f"{plan['baseline']['version']}  {plan['state'].upper()}  {ladder}"
        + (
            f"  shadow at {', '.join(f'{s}%' for s in shadow['stages'])} (sample {shadow['sample']:g}, "
            f"max_cpu {shadow['max_cpu']:g})"
            if shadow
            else ""
        )
        + (f"  ({plan['reason']})" if plan.get("reason") else "")
    )
    for decision in entry["decisions"][-decisions:]:
        when = datetime.fromtimestamp(decision["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"  {when}  stage {plan['stages'][decision['stage_index']]}%  {decision['outcome']}"
            + (f"  alert: {decision['alert']}" if decision.get("alert") else "")
        )
        for record in decision["records"]:
            if record.get("outcome") != "pass" or decision is entry["decisions"][-1]:
                click.echo(
                    f"      {record['metric']:<16} {record['outcome']:<8} "
                    f"treatment {record.get('treatment_value')} "
                    f"control {record.get('control_value')} n={record.get('n')} "
                    f"stat={record.get('statistic')} thr={record.get('threshold')}"
                )


@rollout.command()
@click.argument("rollout_id", required=False)
@click.option("--decisions", default=5, show_default=True, help="How many recent decisions to show.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, rollout_id: str | None, decisions: int, as_json: bool) -> None:
    """Show rollouts (or one) with their latest decisions and statistics."""
    result = _call(ctx, "GET", f"/v1/admin/rollouts/{rollout_id}" if rollout_id else "/v1/admin/rollouts")
    if as_json:
        echo_json(result)
        return
    for entry in [result] if rollout_id else result:
        _print(entry, decisions)
    if not rollout_id and not result:
        click.echo("no rollouts")


def _action(name: str) -> click.Command:
    @click.command(name=name, help=f"{name.capitalize()} a rollout.")
    @click.argument("rollout_id")
    @click.pass_context
    def command(ctx: click.Context, rollout_id: str) -> None:
        result = _call(ctx, "POST", f"/v1/admin/rollouts/{rollout_id}/{name}")
        click.echo(f"{rollout_id}: {result['plan']['state']} at stage {result['stage_percent']}%")

    return command


for _name in ("pause", "resume", "abort", "promote"):
    rollout.add_command(_action(_name))


@rollout.command()
@click.pass_context
def evaluate(ctx: click.Context) -> None:
    """Run the gates now (the server also runs them on its own schedule)."""
    for item in _call(ctx, "POST", "/v1/admin/evaluate"):
        click.echo(
            f"{item['rollout_id']}: {item['decision']['outcome']} -> {item['state']} "
            f"at {item['stage_percent']}%"
        )
