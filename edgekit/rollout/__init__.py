"""Phased rollouts: the plan devices follow and the gates that move it along.

`plan` holds the rollout plan (a signed TUF target), its state machine and the cohort function devices
share with the server; `gates` decides from treatment-vs-control telemetry whether a stage promotes,
holds or rolls back, with sequential tests that stay valid under continuous monitoring, and
`label_free` adds the gates that need no ground truth (health sketches, shadow runs). Both are pure:
the server does the IO (storage, TUF signing, clocks) and calls them.
"""

from edgekit.rollout.gates import (
    ArmMetrics,
    DecisionRecord,
    DeviceTelemetry,
    Evaluation,
    GateConfig,
    GateConfigError,
    StageDecision,
    TelemetryDelta,
    decide,
    evaluate,
    replay,
)
from edgekit.rollout.label_free import (
    ArmEvidence,
    DeviceShadow,
    LabelFreeEvidence,
    arm_evidence,
    label_free_records,
)
from edgekit.rollout.plan import PlanError, Release, RolloutError, RolloutPlan, arm, cohort_u, wanted_release

__all__ = [
    "ArmEvidence",
    "ArmMetrics",
    "DecisionRecord",
    "DeviceShadow",
    "DeviceTelemetry",
    "Evaluation",
    "GateConfig",
    "GateConfigError",
    "LabelFreeEvidence",
    "PlanError",
    "Release",
    "RolloutError",
    "RolloutPlan",
    "StageDecision",
    "TelemetryDelta",
    "arm",
    "arm_evidence",
    "cohort_u",
    "decide",
    "evaluate",
    "label_free_records",
    "replay",
    "wanted_release",
]
