"""Stored ``download`` events -> the bytes delta updates saved, per bundle (status JSON and dashboard).

Each ``download`` event says how one device fetched one bundle: by delta (``bytes`` = the delta) or in full
(``bytes`` = the bundle, plus whatever a failed delta cost first), and for a full download after a delta
was looked for, the fallback's reason code (`device_runtime.telemetry_contract`, kind ``download``).

The numbers are what devices claim, so they are bounded before they count: every row is parsed with the
telemetry contract (a refused row is skipped and counted); a device counts once per bundle (its latest
download of it: a device that retries does not multiply the savings); and the full size of a bundle is its
length in the signed TUF targets when the repository knows it (a device cannot inflate "bytes saved" by
claiming a bigger bundle), the device's ``full_bytes`` only otherwise. A delta's bytes are capped at that
full size. Summing only: no gate reads these figures.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from device_runtime.errors import ContractError
from device_runtime.telemetry_contract import DownloadPayload, parse_payload
from edgekit.server.storage import Database

__all__ = ["bundle_lengths", "delta_savings"]

MAX_ROWS = 200_000  # download rows read per summary (newest first): bounds one dashboard request


def bundle_lengths(repo: Any) -> dict[str, int]:
    """bundle id -> the bundle's length pinned in the signed TUF targets ({} when unreadable)."""
    lengths: dict[str, int] = {}
    try:
        for target in repo.status()["targets"]:
            bundle_id = (target.get("custom") or {}).get("bundle_id")
            if isinstance(bundle_id, str) and isinstance(target.get("length"), int):
                lengths[bundle_id] = int(target["length"])
    except Exception:  # a summary, never a reason to fail the page
        return {}
    return lengths


def _empty() -> dict[str, Any]:
    return {
        "devices": 0,  # devices that downloaded the bundle (each counted once, its latest download)
        "delta": 0,  # of which by delta
        "full": 0,  # in full (first install without a base, or a fallback)
        "bytes": 0,  # bytes on the wire
        "full_bytes": 0,  # bytes the same downloads would have cost in full
        "saved_bytes": 0,
        "saved_share": None,  # saved_bytes / full_bytes
        "fallbacks": {},  # reason code -> devices
    }


def delta_savings(
    db: Database, bundle_ids: Iterable[str], lengths: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Per bundle id: devices, delta vs full downloads, bytes moved vs full, fallbacks by reason; and the
    rows skipped (refused by the contract on reading back)."""
    wanted = sorted(set(bundle_ids))
    per_bundle: dict[str, dict[str, Any]] = {b: _empty() for b in wanted}
    skipped = 0
    if not wanted:
        return {"bundles": per_bundle, "skipped_rows": 0}
    marks = ", ".join("?" for _ in wanted)
    rows = db.execute(
        f"SELECT device_id, time, bundle_id, payload FROM events WHERE kind = 'download' "
        f"AND bundle_id IN ({marks}) ORDER BY time DESC LIMIT {MAX_ROWS}",
        tuple(wanted),
    )
    latest: dict[tuple[str, str], DownloadPayload] = {}
    for device_id, _time, bundle_id, text in rows:
        if (device_id, bundle_id) in latest:
            continue  # newest first: this device's latest download of the bundle is already counted
        try:
            payload = parse_payload("download", json.loads(text))
        except (ValueError, ContractError, RecursionError):
            skipped += 1
            continue
        if not isinstance(payload, DownloadPayload) or payload.bundle_id != bundle_id:
            skipped += 1
            continue
        latest[(device_id, bundle_id)] = payload
    lengths = lengths or {}
    fallbacks: dict[str, Counter[str]] = {b: Counter() for b in wanted}
    for (_, bundle_id), payload in latest.items():
        summary = per_bundle[bundle_id]
        full = lengths.get(bundle_id, payload.full_bytes)
        summary["devices"] += 1
        summary[payload.method] += 1
        summary["bytes"] += min(payload.bytes, full) if payload.method == "delta" else payload.bytes
        summary["full_bytes"] += full
        if payload.fallback is not None:
            fallbacks[bundle_id][payload.fallback] += 1
    for bundle_id, summary in per_bundle.items():
        summary["saved_bytes"] = summary["full_bytes"] - summary["bytes"]  # negative: fallbacks cost extra
        if summary["full_bytes"]:
            summary["saved_share"] = summary["saved_bytes"] / summary["full_bytes"]
        summary["fallbacks"] = dict(sorted(fallbacks[bundle_id].items()))
    return {"bundles": per_bundle, "skipped_rows": skipped}
