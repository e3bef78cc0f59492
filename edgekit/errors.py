"""The root of every error edgekit raises on purpose, and the rollout errors shared by the library and server.

Callers catch `EdgekitError` for "edgekit refused this, the message says why"; subclasses carry what a
caller needs to act on (an HTTP status, a reason code) as their type or an attribute, never in the message
text, so nothing has to be classified by matching words::

    EdgekitError
    ├── RolloutError              edgekit.errors (a rollout request or plan cannot be carried out)
    │   ├── PlanError             an invalid plan, plan document or state transition
    │   ├── UnknownRolloutError   no rollout has this id (HTTP 404)
    │   ├── RolloutConflictError  the request conflicts with the rollouts or releases there are (HTTP 409)
    │   ├── GateConfigError       edgekit.rollout.gates: an invalid gate configuration or replay input
    │   └── SimulationError       edgekit.rollout.simulate: an invalid fleet model or simulation request
    ├── BundleError               edgekit.bundle_build: a bundle cannot be built from these inputs
    ├── GoldenDataError           edgekit._golden_pack: golden inputs cannot be read or packed
    ├── RequirementsError         edgekit.runtime_requirements: a model's runtime needs cannot be derived
    ├── RepositoryError           edgekit.server.tuf_repo: the TUF repository refused an operation
    │   └── BundleRefusedError    a bundle that does not verify is never published
    ├── StorageError              edgekit.server.storage: the database cannot be opened or used
    └── EmulationError            edgekit.emulation.errors: the emulated arm64 root cannot be built or used

Errors of the packages edgekit builds on keep their own roots (`converters.errors.ConverterError`,
`device_runtime.errors.DeviceRuntimeError`, `signing.errors.SigningError`); the CLI turns all four roots
into one line and exit code 1. The device's plan contract raises `device_runtime.rollout_plan.PlanError`;
edgekit's plan state machine reports the same problems as `edgekit.errors.PlanError`.
"""

from __future__ import annotations

__all__ = [
    "EdgekitError",
    "PlanError",
    "RolloutConflictError",
    "RolloutError",
    "UnknownRolloutError",
]


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose (the message says what, where and the fix)."""


class RolloutError(EdgekitError):
    """A rollout request or plan cannot be carried out."""


class PlanError(RolloutError):
    """A rollout plan, plan document or state transition is invalid (the message says which and why).

    `reason` is the plan contract's stable code when the problem is the document (`plan-format`,
    `unsafe-target-path`, ...), and `transition` for a state change the plan's state does not allow.
    """

    def __init__(self, message: str, reason: str = "plan-format") -> None:
        super().__init__(message)
        self.reason = reason


class UnknownRolloutError(RolloutError):
    """No rollout has this id."""

    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"no rollout {rollout_id!r}; list them with `edgekit rollout status`")
        self.rollout_id = rollout_id


class RolloutConflictError(RolloutError):
    """The request conflicts with what exists: an unpublished or older release, a rollout already running,
    or an action the plan's state does not allow."""
