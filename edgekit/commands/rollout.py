"""`edgekit rollout start|status|watch|evaluate|pause|resume|abort|promote`: the admin API from the terminal.

The admin token is read only when a subcommand calls the server, so `--help` needs no token and no server.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import CommandError, emit_result, json_flag, json_option


def _token(ctx: click.Context) -> str:
    """The admin token, read when a subcommand first needs it (never for --help)."""
    settings = ctx.obj["rollout"]
    if settings.get("token") is None:
        token_file: Path | None = settings["token_file"]
        try:
            token = (
                token_file.read_text().strip() if token_file else os.environ.get(settings["token_env"], "")
            )
        except OSError as e:
            raise click.UsageError(f"--token-file {token_file}: cannot read it ({e.strerror or e})") from None
        if not token:
            raise click.UsageError(f"no admin token: set ${settings['token_env']} or pass --token-file")
        settings["token"] = token
    return str(settings["token"])


def _call(ctx: click.Context, method: str, path: str, body: Any = None) -> Any:
    server, token = ctx.obj["rollout"]["server"], _token(ctx)
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
        raise CommandError(f"server answered {e.code}: {detail}", code="ServerError") from None
    except (urllib.error.URLError, OSError) as e:
        raise CommandError(
            f"cannot reach {server}: {getattr(e, 'reason', e)}",
            code="Unreachable",
            hint=(
                "check that `edgekit serve` runs there, or give its address: `edgekit rollout --server URL "
                "...` (before the subcommand) or $EDGEKIT_SERVER"
            ),
        ) from None


@click.group()
@click.option(
    "--server",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="EDGEKIT_SERVER",
    help="Base URL of `edgekit serve` (or $EDGEKIT_SERVER).",
)
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
    """Phased rollouts: start, status, watch, evaluate, pause, resume, abort, promote."""
    ctx.ensure_object(dict)
    ctx.obj["rollout"] = {"server": server, "token_env": token_env, "token_file": token_file, "token": None}


@rollout.command()
@click.option("--model", required=True, help="Model name, as published (e.g. digits).")
@click.option("--channel", default="stable", show_default=True, help="Release channel the fleet follows.")
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
@click.option(
    "--min-arm-devices",
    type=click.IntRange(0, 100_000),
    default=0,
    show_default=True,
    help="Draw the cohorts until every stage before the last has at least this many registered devices "
    "in the update group and in the control group (0: take the first draw); refused when the registered "
    "fleet cannot give them.",
)
@json_option
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
    min_arm_devices: int,
    as_json: bool,
) -> None:
    """Start rolling TARGET out over BASELINE (with --shadow-stage: shadowing it first in those stages).

    Says how many registered devices the first stage drew into each group, and warns when they are fewer
    than the gates need to decide it.
    """
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
        "min_arm_devices": min_arm_devices,
    }
    if shadow_stages:
        body["shadow"] = {
            "stages": sorted(set(shadow_stages)),
            "sample": shadow_sample,
            "max_cpu": shadow_max_cpu,
        }
    result = _call(ctx, "POST", "/v1/admin/rollouts", body)
    if as_json:
        emit_result(result)
    else:
        plan = result["plan"]
        click.echo(
            f"started {plan['rollout_id']}: {model} {target_version} over {baseline_version}, "
            f"stage {result['stage_percent']}%"
        )
        cohorts = result.get("cohorts")
        if cohorts and cohorts["stages"]:
            click.echo(cohort_line(cohorts))
        if cohorts and cohorts.get("warning"):
            click.echo(f"note: {cohorts['warning']}", err=True)


def cohort_line(cohorts: dict[str, Any]) -> str:
    """The first stage's groups in words, from a start's `cohorts`: 'stage 1%: 4 devices in the update
    group, 5 in the control group, of 300 registered' (and how many draws --min-arm-devices took)."""
    first = cohorts["stages"][0]
    treatment = f"{first['treatment']} device{'' if first['treatment'] == 1 else 's'} in the update group"
    control = "no control group" if first["control"] is None else f"{first['control']} in the control group"
    line = f"stage {first['percent']}%: {treatment}, {control}, of {cohorts['registered']} registered"
    if cohorts.get("min_arm_devices"):
        draws = f"{cohorts['draws']} draw{'s' if cohorts['draws'] != 1 else ''}"
        line += f" (drawn for at least {cohorts['min_arm_devices']} each: {draws})"
    return line


def _print(entry: dict[str, Any], decisions: int) -> None:
    from edgekit.commands._rollout_words import decision_lines, record_words

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
        # A gate's rollback reason is its check's raw detail: the decision's lines below say it in words.
        + (
            f"  ({plan['reason']})"
            if plan.get("reason") and not plan["reason"].startswith("rollback: ")
            else ""
        )
    )
    for decision in entry["decisions"][-decisions:]:
        when = datetime.fromtimestamp(decision["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        alerts = [
            a for a in (decision.get("alert") or "").splitlines() if a and not a.startswith("rollback: ")
        ]
        click.echo(
            f"  {when}  stage {plan['stages'][decision['stage_index']]}%  {decision['outcome']}"
            + (f"  alert: {'; '.join(alerts)}" if alerts else "")
        )
        # In words (the same as `rollout watch` and the demo), the raw numbers are in --json: the latest
        # decision says every check, earlier ones what held or failed.
        if decision is entry["decisions"][-1]:
            lines = decision_lines(decision)
        else:
            exposure = next((r for r in decision["records"] if r["metric"] == "exposure"), None)
            lines = [record_words(r, exposure) for r in decision["records"] if r.get("outcome") != "pass"]
        for line in lines:
            click.echo(f"      {line}")


@rollout.command()
@click.argument("rollout_id", required=False)
@click.option("--decisions", default=5, show_default=True, help="How many recent decisions to show.")
@json_option
@click.pass_context
def status(ctx: click.Context, rollout_id: str | None, decisions: int, as_json: bool) -> None:
    """Show rollouts (or one) with their latest decisions and statistics."""
    result = _call(ctx, "GET", f"/v1/admin/rollouts/{rollout_id}" if rollout_id else "/v1/admin/rollouts")
    if as_json:
        emit_result(result if rollout_id else {"rollouts": result})
        return
    for entry in [result] if rollout_id else result:
        _print(entry, decisions)
    if not rollout_id and not result:
        click.echo("no rollouts")


def _action(name: str) -> click.Command:
    @click.command(name=name, help=_ACTIONS[name])
    @click.argument("rollout_id")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, rollout_id: str, as_json: bool) -> None:
        result = _call(ctx, "POST", f"/v1/admin/rollouts/{rollout_id}/{name}")
        if as_json:
            emit_result(result)
            return
        click.echo(f"{rollout_id}: {result['plan']['state']} at stage {result['stage_percent']}%")

    return command


_ACTIONS = {
    "pause": "Pause a rollout: cohorts stay as they are and the gates stop deciding.",
    "resume": "Resume a paused rollout at the same stage.",
    "abort": "Abort a rollout for good: every device returns to the baseline.",
    "promote": "Move a rollout to its next stage now, without waiting for the gates.",
}
for _name in _ACTIONS:
    rollout.add_command(_action(_name))


@rollout.command()
@json_option
@click.pass_context
def evaluate(ctx: click.Context, as_json: bool) -> None:
    """Run the gates now (the server also runs them on its own schedule)."""
    results = _call(ctx, "POST", "/v1/admin/evaluate")
    if as_json:
        emit_result({"evaluations": results})
        return
    for item in results:
        click.echo(
            f"{item['rollout_id']}: {item['decision']['outcome']} -> {item['state']} "
            f"at {item['stage_percent']}%"
        )


@rollout.command()
@click.argument("rollout_id")
@click.option(
    "--every",
    "interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.2, 3600),
    help="Seconds between polls of the status API.",
)
@click.option("--once", is_flag=True, help="Print the rollout's state once and exit (for scripts).")
@json_flag("the rollout's state at each poll", per_line=True)
@click.pass_context
def watch(ctx: click.Context, rollout_id: str, interval: float, once: bool, as_json: bool) -> None:
    """Follow ROLLOUT_ID live: one plain-words line whenever its stage, devices, gates or decision change.

    Stops by itself when the rollout is complete or rolled back; Ctrl-C stops watching (exit 0) and
    leaves the rollout as it is.
    """
    from edgekit.commands._rollout_state import FINAL_STATES, snapshot, state_line

    shown = None
    try:
        while True:
            entry = _call(ctx, "GET", f"/v1/admin/rollouts/{rollout_id}")
            line = state_line(entry)
            if as_json:
                emit_result({**snapshot(entry), "line": line, "changed": line != shown}, line=True)
            elif line != shown:
                click.echo(f"{datetime.now(UTC).strftime('%H:%M:%S')}  {line}")
            shown = line
            if once or entry["plan"]["state"] in FINAL_STATES:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        ctx.exit(0)
