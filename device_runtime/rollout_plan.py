"""The rollout plan contract: the signed document that tells a device which release to run. Pure: no IO.

The server writes one plan per model and channel (`edgekit.rollout.plan.RolloutPlan` is this `Plan` plus
its state machine) and publishes it as the TUF target `rollouts/<model>/<channel>.json`; the device reads
it with `parse_plan` and decides with `decide`. Both sides run this module, so they cannot disagree.

The document (canonical JSON: sorted keys, no whitespace, UTF-8; every key required except `shadow`, no
other key)::

    model                 bundle name rule: [a-z0-9][a-z0-9._-]{0,63} (as in the signed manifest)
    channel               the same rule, e.g. "stable"
    rollout_id            [A-Za-z0-9][A-Za-z0-9._-]{0,199}
    salt                  1-256 characters; fixed for the rollout's life (a new salt reshuffles cohorts)
    target, baseline      {version, release_counter, target_path, bundle_id}; baseline is null only in a
                          complete plan (a release to everyone with nothing to return to)
    stages                integer percentages, strictly increasing in [1, 100], ending at 100; with a
                          control group every stage before the last is <= 50
    stage_index           0 .. len(stages) - 1; a complete plan is at its last stage
    state                 running | paused | halted | rolled_back | complete
    control               true: a same-size control group stays on the baseline
    stage_started_at      seconds since the Unix epoch (finite, >= 0; a float)
    stage_deadline_hours  hours (finite, > 0; a float)
    reason                why the plan was halted or rolled back (<= 1,000 characters; "" otherwise)
    shadow (optional)     absent or null: no shadow trial. Otherwise {stages, sample, max_cpu}:
                          stages   stage percents (each one of plan.stages, strictly increasing, never the
                                   last) in which the treatment runs the target IN SHADOW instead of
                                   serving it; sample: share of live inferences also run through the
                                   shadow model (0 < s <= 1); max_cpu: the shadow's bounded share of
                                   inference time (0 < c <= 1): a shadow run is skipped when the shadow's
                                   cumulative run time would exceed max_cpu x the active model's
                                   cumulative run time. A plan without the key has exactly the canonical
                                   bytes it had before the key existed (`to_dict` omits it when None).

A release: `version` by the manifest's version rule, `release_counter` an integer >= 0 (the target's is
above the baseline's: devices refuse older releases), `target_path` exactly `bundles/<model>/<file>.ekb`
of safe components (remote names never become local paths), `bundle_id` 64 lower-case hex digits.

Cohorts (`cohort_u`): ``u = int.from_bytes(SHA-256(salt_utf8 + device_id_utf8)[:8], "big") / 2**64``. At
stage p% a device is in the treatment iff ``u < p/100``, in the control group iff the plan keeps one and
``p/100 <= u < 2p/100`` (same size, stays on the baseline), and "other" otherwise. Stages nest and are
sticky: u depends only on the salt and the device id.

Decisions (`decide`): complete -> the target; halted or rolled back -> the baseline; running or paused ->
the target for the treatment, the baseline for everyone else. In a shadow stage of a running or paused plan
(`Plan.is_shadow_stage`) the treatment keeps serving the baseline and runs the target in shadow
(``shadow = target``), and the control runs the baseline in shadow next to itself (``shadow = baseline``:
self-shadow, which measures the engine's own disagreement and puts the same shadow load on both arms);
everyone else, and every other stage and state, has ``shadow = None``.

Errors: `PlanError` (a `DeviceRuntimeError`) with a stable `reason` code for telemetry: `plan-format`,
`wrong-model`, `wrong-channel`, `unsafe-target-path`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from device_runtime.errors import DeviceRuntimeError
from signing.errors import FormatError
from signing.manifest import NAME_PATTERN, VERSION_PATTERN
from signing.strict_json import MAX_INTEGER, canonical_bytes, parse_strict

__all__ = [
    "ARMS",
    "MAX_PLAN_BYTES",
    "MAX_REASON_CHARS",
    "PLAN_KEYS",
    "RELEASE_KEYS",
    "SHADOW_KEYS",
    "STATES",
    "Arm",
    "Decision",
    "Plan",
    "PlanError",
    "Release",
    "Shadow",
    "State",
    "arm",
    "cohort_u",
    "decide",
    "load_document",
    "parse_plan",
    "plan_fields",
    "plan_target_path",
    "stage_arm",
]

State = Literal["running", "paused", "halted", "rolled_back", "complete"]
Arm = Literal["treatment", "control", "other"]
STATES: tuple[str, ...] = ("running", "paused", "halted", "rolled_back", "complete")
ARMS: tuple[str, ...] = ("treatment", "control", "other")

MAX_PLAN_BYTES = 64 << 10  # bytes; a valid plan is well under 4 KiB
MAX_REASON_CHARS = 1000  # characters
MAX_SALT_CHARS = 256  # characters
_ROLLOUT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

RELEASE_KEYS = frozenset({"version", "release_counter", "target_path", "bundle_id"})
PLAN_KEYS = frozenset(
    {
        "model",
        "channel",
        "rollout_id",
        "salt",
        "target",
        "baseline",
        "stages",
        "stage_index",
        "state",
        "control",
        "stage_started_at",
        "stage_deadline_hours",
        "reason",
    }
)
OPTIONAL_PLAN_KEYS = frozenset({"shadow"})
SHADOW_KEYS = frozenset({"stages", "sample", "max_cpu"})


class PlanError(DeviceRuntimeError):
    """A rollout plan is malformed, unsafe or not for this model and channel: keep the current model.

    `reason` is a stable code for telemetry (see the module docstring).
    """

    def __init__(self, message: str, reason: str = "plan-format") -> None:
        super().__init__(message)
        self.reason = reason


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_keys(
    data: Mapping[str, Any], expected: frozenset[str], where: str, optional: frozenset[str] = frozenset()
) -> None:
    missing = sorted(expected - data.keys())
    unknown = sorted(data.keys() - expected - optional)
    if missing or unknown:
        raise PlanError(f"{where}: missing keys {missing}, unknown keys {unknown}")


@dataclass(frozen=True)
class Release:
    """One release of a model as a plan names it.

    Attributes:
        version: the bundle's signed version (for example "1.4.0").
        release_counter: the bundle's signed anti-rollback counter (integer >= 0).
        target_path: the TUF target path of the bundle, `bundles/<model>/<file>.ekb`.
        bundle_id: the bundle's identity (64 hex digits), as devices report it in telemetry.

    Raises:
        PlanError: on any invalid field (checked at construction); an unsafe path has reason
            `unsafe-target-path`.
    """

    version: str
    release_counter: int
    target_path: str
    bundle_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not VERSION_PATTERN.fullmatch(self.version):
            raise PlanError(
                f"release version must be 1-64 characters of letters, digits, '.', '+', '_' or '-' "
                f"(the bundle manifest's rule), got {self.version!r}"
            )
        counter = self.release_counter
        if not _is_int(counter) or not 0 <= counter <= MAX_INTEGER:
            raise PlanError(f"release_counter must be an integer in [0, 2^53-1], got {counter!r}")
        parts = self.target_path.split("/") if isinstance(self.target_path, str) else []
        if (
            len(parts) != 3
            or parts[0] != "bundles"
            or not all(_COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts)
            or not parts[2].endswith(".ekb")
        ):
            raise PlanError(
                f"target_path {self.target_path!r}: expected bundles/<model>/<file>.ekb of [A-Za-z0-9._+-] "
                "parts (remote names never become local paths)",
                reason="unsafe-target-path",
            )
        if not isinstance(self.bundle_id, str) or not _HEX64.fullmatch(self.bundle_id):
            raise PlanError(f"bundle_id must be 64 lower-case hex digits, got {self.bundle_id!r}")

    def to_dict(self) -> dict[str, Any]:
        """The release as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object, *, where: str = "release") -> Release:
        """Build a release from a parsed JSON object, refusing unknown or missing keys.

        Raises:
            PlanError: not an object, wrong keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise PlanError(f"{where} must be a JSON object, got {type(data).__name__}")
        _check_keys(data, RELEASE_KEYS, where)
        try:
            return cls(**data)
        except PlanError as e:
            raise PlanError(f"{where}: {e}", reason=e.reason) from e


@dataclass(frozen=True)
class Shadow:
    """A plan's shadow trial: in `stages` the treatment runs the target next to the baseline, unserved.

    Attributes:
        stages: stage percents (strictly increasing; the plan checks each is one of its stages, never
            its last) in which the treatment shadows the target instead of serving it.
        sample: share of live inferences also run through the shadow model, 0 < sample <= 1.
        max_cpu: the shadow's bounded share of inference time, 0 < max_cpu <= 1 (shadow time is kept
            within max_cpu x the active model's time; runs beyond it are skipped and counted).

    Raises:
        PlanError: on any invalid field (checked at construction).
    """

    stages: tuple[int, ...] = (1,)  # percent
    sample: float = 0.1  # share of inferences
    max_cpu: float = 0.2  # share of the active model's inference time

    def __post_init__(self) -> None:
        stages = self.stages
        if not isinstance(stages, tuple) or not stages or not all(_is_int(s) for s in stages):
            raise PlanError(
                f"plan.shadow.stages must be a non-empty list of stage percentages, got {stages!r}"
            )
        if any(a >= b for a, b in itertools.pairwise(stages)):
            raise PlanError(f"plan.shadow.stages must be strictly increasing, got {list(stages)}")
        for name in ("sample", "max_cpu"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or not 0 < value <= 1:
                raise PlanError(f"plan.shadow.{name} must be a number in (0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))  # 1 and 1.0 give the same canonical JSON

    def to_dict(self) -> dict[str, Any]:
        """The shadow trial as a JSON-ready dict."""
        return {"stages": list(self.stages), "sample": self.sample, "max_cpu": self.max_cpu}

    @classmethod
    def from_dict(cls, data: object) -> Shadow:
        """Build a shadow trial from a parsed JSON object, refusing unknown or missing keys.

        Raises:
            PlanError: not an object, wrong keys or invalid values.
        """
        if not isinstance(data, Mapping):
            raise PlanError(f"plan.shadow must be a JSON object or null, got {type(data).__name__}")
        _check_keys(data, SHADOW_KEYS, "plan.shadow")
        if not isinstance(data["stages"], list):
            raise PlanError(f"plan.shadow.stages must be a JSON list, got {data['stages']!r}")
        return cls(tuple(data["stages"]), data["sample"], data["max_cpu"])


@dataclass(frozen=True)
class Plan:
    """A rollout plan: `target` rolled out over `baseline` for one model and channel.

    The attributes are the document's keys (see the module docstring for their rules).

    Raises:
        PlanError: on any invalid field (checked at construction).
    """

    model: str
    channel: str
    rollout_id: str
    salt: str
    target: Release
    baseline: Release | None
    stages: tuple[int, ...] = (1, 5, 25, 100)  # percent
    stage_index: int = 0
    state: State = "running"
    control: bool = True
    stage_started_at: float = 0.0  # seconds since the Unix epoch
    stage_deadline_hours: float = 72.0  # hours
    reason: str = ""
    shadow: Shadow | None = None

    def __post_init__(self) -> None:
        for name in ("model", "channel"):
            value = getattr(self, name)
            if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
                raise PlanError(
                    f"plan.{name} must be 1-64 characters of lower-case letters, digits, '.', '_' or '-' "
                    f"starting with a letter or digit (the bundle name rule), got {value!r}"
                )
        if not isinstance(self.rollout_id, str) or not _ROLLOUT_ID.fullmatch(self.rollout_id):
            raise PlanError(
                f"plan.rollout_id must be 1-200 characters of letters, digits, '.', '_' or '-' starting "
                f"with a letter or digit, got {self.rollout_id!r}"
            )
        if not isinstance(self.salt, str) or not 0 < len(self.salt) <= MAX_SALT_CHARS:
            raise PlanError(f"plan.salt must be a non-empty string of <= {MAX_SALT_CHARS} characters")
        self._check_releases()
        self._check_stages()
        if not _is_int(self.stage_index) or not 0 <= self.stage_index < len(self.stages):
            raise PlanError(
                f"plan.stage_index must be an integer in [0, {len(self.stages) - 1}], "
                f"got {self.stage_index!r}"
            )
        if self.state not in STATES:
            raise PlanError(f"plan.state must be one of {', '.join(STATES)}, got {self.state!r}")
        if self.state == "complete" and self.stage_index != len(self.stages) - 1:
            raise PlanError("a complete plan must be at its last stage (100%)")
        if self.baseline is None and self.state != "complete":
            raise PlanError(
                f"a {self.state} plan needs a baseline (devices outside the treatment, and every device "
                "after a halt or roll-back, run it); only a complete plan may have none"
            )
        for name, positive in (("stage_started_at", False), ("stage_deadline_hours", True)):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise PlanError(f"plan.{name} must be a finite number, got {value!r}")
            if value < 0 or (positive and value == 0):
                raise PlanError(
                    f"plan.{name} must be {'> 0 hours' if positive else '>= 0 seconds'}, got {value!r}"
                )
            # Normalised so that equal plans have equal canonical JSON (0 and 0.0 both become 0.0).
            object.__setattr__(self, name, float(value))
        if not isinstance(self.reason, str) or len(self.reason) > MAX_REASON_CHARS:
            raise PlanError(f"plan.reason must be a string of <= {MAX_REASON_CHARS} characters")
        self._check_shadow()

    def _check_shadow(self) -> None:
        shadow = self.shadow
        if shadow is None:
            return
        if not isinstance(shadow, Shadow):
            raise PlanError(f"plan.shadow must be a Shadow or None, got {type(shadow).__name__}")
        unknown = [s for s in shadow.stages if s not in self.stages]
        if unknown:
            raise PlanError(
                f"plan.shadow.stages {list(shadow.stages)}: {unknown} not among the plan's stages "
                f"{list(self.stages)}; name stages of the plan"
            )
        if self.stages[-1] in shadow.stages:
            raise PlanError(
                f"plan.shadow.stages {list(shadow.stages)} include the last stage {self.stages[-1]}%: the "
                "last stage serves the target to every device, it cannot shadow it"
            )

    def _check_releases(self) -> None:
        for name in ("target", "baseline"):
            release = getattr(self, name)
            if release is None and name == "baseline":
                continue
            if not isinstance(release, Release):
                raise PlanError(f"plan.{name} must be a Release, got {type(release).__name__}")
            model = release.target_path.split("/")[1]
            if model != self.model:
                raise PlanError(
                    f"plan.{name}.target_path {release.target_path!r} is not under bundles/{self.model}/",
                    reason="unsafe-target-path",
                )
        baseline = self.baseline
        if baseline is None:
            return
        if self.target == baseline:
            raise PlanError("target and baseline are the same release; a rollout needs two releases")
        if self.target.release_counter <= baseline.release_counter:
            raise PlanError(
                f"target release_counter {self.target.release_counter} must be above the baseline's "
                f"{baseline.release_counter} (devices refuse older releases)"
            )

    def _check_stages(self) -> None:
        stages = self.stages
        if not isinstance(stages, tuple) or not stages:
            raise PlanError(f"plan.stages must be a non-empty list of percentages, got {stages!r}")
        if not all(_is_int(s) and 0 < s <= 100 for s in stages):
            raise PlanError(f"every stage must be an integer percentage in (0, 100], got {list(stages)}")
        if any(a >= b for a, b in itertools.pairwise(stages)):
            raise PlanError(f"plan.stages must be strictly increasing, got {list(stages)}")
        if stages[-1] != 100:
            raise PlanError(f"the last stage must be 100 so the rollout can finish, got {list(stages)}")
        if self.control is not True and self.control is not False:
            raise PlanError(f"plan.control must be true or false, got {self.control!r}")
        if self.control and any(s > 50 for s in stages[:-1]):
            raise PlanError(
                f"with a control group every stage before 100 must be <= 50% (control is p <= u < 2p), "
                f"got {list(stages)}; lower the stage or set control to false"
            )

    @property
    def stage_percent(self) -> int:
        """The current stage, in percent of the fleet."""
        return self.stages[self.stage_index]

    @property
    def at_last_stage(self) -> bool:
        """Whether the current stage is the last one (100%)."""
        return self.stage_index == len(self.stages) - 1

    @property
    def is_shadow_stage(self) -> bool:
        """Whether the current stage is one of the shadow stages (whatever the state; `decide` shadows
        only while the plan is running or paused)."""
        return self.shadow is not None and self.stage_percent in self.shadow.stages

    def to_dict(self) -> dict[str, Any]:
        """The plan as the JSON-ready document (every key of `PLAN_KEYS`; `shadow` only when set, so a
        plan without a shadow trial keeps the canonical bytes it always had)."""
        document: dict[str, Any] = {
            "model": self.model,
            "channel": self.channel,
            "rollout_id": self.rollout_id,
            "salt": self.salt,
            "target": self.target.to_dict(),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "stages": list(self.stages),
            "stage_index": self.stage_index,
            "state": self.state,
            "control": self.control,
            "stage_started_at": self.stage_started_at,
            "stage_deadline_hours": self.stage_deadline_hours,
            "reason": self.reason,
        }
        if self.shadow is not None:
            document["shadow"] = self.shadow.to_dict()
        return document

    def to_bytes(self) -> bytes:
        """The canonical document (sorted keys, no whitespace, UTF-8): equal plans give equal bytes."""
        return canonical_bytes(self.to_dict())


def plan_fields(document: object) -> dict[str, Any]:
    """The keyword arguments of `Plan` (or a subclass) from a parsed document, keys checked.

    Raises:
        PlanError: not an object, missing or unknown keys, releases or stages of the wrong JSON type.
    """
    if not isinstance(document, Mapping):
        raise PlanError(f"a rollout plan must be a JSON object, got {type(document).__name__}")
    _check_keys(document, PLAN_KEYS, "rollout plan", OPTIONAL_PLAN_KEYS)
    fields = dict(document)
    if fields.get("shadow") is not None:
        fields["shadow"] = Shadow.from_dict(fields["shadow"])
    if not isinstance(fields["stages"], list):
        raise PlanError(f"plan.stages must be a JSON list, got {fields['stages']!r}")
    fields["stages"] = tuple(fields["stages"])
    fields["target"] = Release.from_dict(fields["target"], where="target")
    if fields["baseline"] is not None:
        fields["baseline"] = Release.from_dict(fields["baseline"], where="baseline")
    return fields


def load_document(document: bytes | str | Mapping[str, Any]) -> object:
    """Bytes or text are parsed as strict JSON (bounded, no duplicate keys, no NaN); mappings pass.

    Raises:
        PlanError: too large or not strict JSON (reason `plan-format`).
    """
    if isinstance(document, Mapping):
        return document
    data = document.encode("utf-8") if isinstance(document, str) else document
    try:
        return parse_strict(data, what="rollout plan", max_bytes=MAX_PLAN_BYTES)
    except FormatError as e:
        raise PlanError(str(e)) from e


def parse_plan(
    document: bytes | str | Mapping[str, Any], *, model: str | None = None, channel: str | None = None
) -> Plan:
    """Parse and check a rollout plan; `model` and `channel`, when given, are the ones expected.

    Raises:
        PlanError: malformed (`plan-format`), unsafe target paths (`unsafe-target-path`), or for another
            model (`wrong-model`) or channel (`wrong-channel`).
    """
    fields = plan_fields(load_document(document))
    # Checked first: a plan for another model or channel is reported as such, whatever else it contains.
    if model is not None and fields["model"] != model:
        raise PlanError(
            f"the plan is for model {fields['model']!r}, this device runs {model!r}", "wrong-model"
        )
    if channel is not None and fields["channel"] != channel:
        raise PlanError(
            f"the plan is for channel {fields['channel']!r}, this device follows {channel!r}", "wrong-channel"
        )
    return Plan(**fields)


def plan_target_path(model: str, channel: str) -> str:
    """The TUF target path of a model's plan on a channel."""
    return f"rollouts/{model}/{channel}.json"


def cohort_u(salt: str, device_id: str) -> float:
    """u in [0, 1): the first 8 bytes of SHA-256(UTF-8 salt ‖ UTF-8 device id), big-endian, over 2**64.

    Devices and the server compute exactly this value; it must never change.
    """
    digest = hashlib.sha256(salt.encode("utf-8") + device_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stage_arm(u: float, stage_percent: int, control: bool) -> Arm:
    """The arm of a device at `u` (`cohort_u`) in a stage of `stage_percent` (see the module docstring);
    the server counts the arms of registered devices with it when it draws a salt."""
    p = stage_percent / 100
    if u < p:
        return "treatment"
    if control and u < 2 * p:  # at 100% every u < 1 is in the treatment: no control
        return "control"
    return "other"


def _arm(plan: Plan, u: float) -> Arm:
    return stage_arm(u, plan.stage_percent, plan.control)


def arm(plan: Plan, device_id: str) -> Arm:
    """Which arm of the current stage `device_id` is in (see the module docstring)."""
    return _arm(plan, cohort_u(plan.salt, device_id))


@dataclass(frozen=True)
class Decision:
    """What a device should run: `arm` is its cohort at the current stage; `wanted` None keeps its model.

    `shadow`: the release to run in shadow next to `wanted` (installed in the inactive slot, never served),
    None outside a shadow stage; `shadow_config` the plan's shadow settings whenever `shadow` is set.
    """

    rollout_id: str
    state: str
    arm: Arm
    u: float
    stage_percent: int
    wanted: Release | None
    reason: str
    shadow: Release | None = None
    shadow_config: Shadow | None = None


def decide(plan: Plan, device_id: str) -> Decision:
    """Which release `device_id` runs under `plan` (no IO; see the module docstring for the rules)."""
    u = cohort_u(plan.salt, device_id)
    cohort = _arm(plan, u)
    p = plan.stage_percent / 100
    wanted: Release | None
    shadow: Release | None = None
    shadowing = plan.is_shadow_stage and plan.state in ("running", "paused")
    if plan.state == "complete":
        wanted, reason = plan.target, "rollout complete: every device runs the target"
    elif plan.state in ("halted", "rolled_back"):
        wanted, reason = plan.baseline, f"rollout {plan.state}: every device runs the baseline"
    elif cohort == "treatment" and shadowing:
        wanted, shadow = plan.baseline, plan.target
        reason = f"u={u:.6f} < {p:.4f}: treatment shadows the target at stage {plan.stage_percent}%"
    elif cohort == "treatment":
        wanted, reason = plan.target, f"u={u:.6f} < {p:.4f}: treatment at stage {plan.stage_percent}%"
    elif cohort == "control" and shadowing:
        wanted, shadow = plan.baseline, plan.baseline
        reason = f"u={u:.6f} >= {p:.4f}: control shadows the baseline at stage {plan.stage_percent}%"
    else:
        wanted, reason = plan.baseline, f"u={u:.6f} >= {p:.4f}: {cohort} group stays on the baseline"
    config = plan.shadow if shadow is not None else None
    return Decision(
        plan.rollout_id, plan.state, cohort, u, plan.stage_percent, wanted, reason, shadow, config
    )
