"""`edgekit keygen | bundle | sign | verify | inspect`: signed bundles on the command line."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import click

from edgekit.commands._common import emit_result, handle_errors, json_flag, json_option

PASSPHRASE_HELP = (
    "Name of an environment variable holding the key's passphrase (never pass it as an argument)."
)


def _passphrase(env: str | None) -> bytes | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise click.UsageError(f"environment variable {env} is empty or not set")
    return value.encode()


@click.command()
@click.option(
    "-o",
    "--output",
    "directory",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for NAME.key (0600) and NAME.pub.",
)
@click.option("--name", default="release", show_default=True, help="Key file name.")
@click.option("--passphrase-env", metavar="VAR", help=PASSPHRASE_HELP)
@json_option
@handle_errors
def keygen(directory: Path, name: str, passphrase_env: str | None, as_json: bool) -> None:
    """Create an ECDSA P-256 signing key pair; refuses to overwrite existing keys."""
    from signing.keys import generate_keypair, load_public_key

    private, public = generate_keypair(directory, name=name, passphrase=_passphrase(passphrase_env))
    key_id = load_public_key(public).key_id
    if as_json:
        emit_result({"private_key": str(private), "public_key": str(public), "key_id": key_id})
        return
    click.echo(f"wrote {private} (private, mode 0600) and {public}")
    click.echo(f"key id {key_id}")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="NAME-VERSION.ekb")
@click.option("--name", required=True, help="Model name (lower case), e.g. digits.")
@click.option("--version", "version", required=True, help="Release version, e.g. 1.2.0.")
@click.option(
    "--key",
    "keys",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Private signing key (repeat for k-of-n).",
)
@click.option("--passphrase-env", metavar="VAR", help=PASSPHRASE_HELP)
@click.option(
    "--preprocess", type=click.Path(path_type=Path), help="Preprocessing spec (edgekit.preprocess/v1)."
)
@click.option("--labels", type=click.Path(path_type=Path), help="labels.txt, one label per class.")
@click.option(
    "--golden",
    type=click.Path(path_type=Path),
    help="Sample inputs for golden vectors: .npy/.npz or a folder of images (default: random tensors).",
)
@click.option("--parity", type=click.Path(path_type=Path), help="Parity report (`quantize --report`).")
@click.option(
    "--hardware", "hardware_ids", multiple=True, help="Hardware id this bundle is for (repeatable)."
)
@click.option(
    "--release-counter",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Monotonic release number; devices refuse a lower one (anti-rollback).",
)
@click.option("--created", help="Creation time to record (default: SOURCE_DATE_EPOCH or now).")
@click.option(
    "--min-runtime-version",
    metavar="X.Y[.Z]",
    help="State the engine version the device needs (default: read from the model's operators); "
    "must be at least what the operators need.",
)
@click.option(
    "--golden-samples",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="At most this many golden samples (at least one is always kept).",
)
@click.option(
    "--golden-budget",
    metavar="BYTES",
    help="Golden vector byte budget, e.g. 512KiB or 2MB (default: max(256KiB, 10% of the model)).",
)
@click.option(
    "--health-samples",
    type=click.IntRange(0, 1024),
    default=64,
    show_default=True,
    help="Samples of the --golden data the signed reference health profile (health.json) is computed "
    "from; the label-free rollout gates compare devices against it. 0: no profile.",
)
@json_flag("the bundle summary")
@handle_errors
def bundle(
    model: Path,
    output: Path,
    name: str,
    version: str,
    keys: tuple[Path, ...],
    passphrase_env: str | None,
    preprocess: Path | None,
    labels: Path | None,
    golden: Path | None,
    parity: Path | None,
    hardware_ids: tuple[str, ...],
    release_counter: int,
    created: str | None,
    min_runtime_version: str | None,
    golden_samples: int,
    golden_budget: str | None,
    health_samples: int,
    as_json: bool,
) -> None:
    """Build, sign and write a deterministic bundle for MODEL (an existing .onnx or .tflite, as it is)."""
    from edgekit.bundle_build import BundleRequest, build_bundle

    result = build_bundle(
        BundleRequest(
            model=model,
            output=output,
            name=name,
            version=version,
            keys=keys,
            passphrase=_passphrase(passphrase_env),
            preprocess=preprocess,
            labels=labels,
            golden=golden,
            parity=parity,
            hardware_ids=hardware_ids,
            release_counter=release_counter,
            created=created,
            min_runtime_version=min_runtime_version,
            golden_samples=golden_samples,
            golden_budget=None if golden_budget is None else parse_bytes(golden_budget),
            health_samples=health_samples,
        )
    )
    summary = _manifest_summary(result.manifest)
    summary.update(
        {
            "path": str(result.path),
            "bundle_id": result.payload_sha256,
            "size_bytes": result.path.stat().st_size,
            "runtime_source": result.requirements_source,
            "golden": result.golden,
            "health": result.health or None,
            "notes": result.notes,
        }
    )
    if as_json:
        emit_result(summary)
        return
    click.echo(
        f"wrote {result.path} ({summary['size_bytes']:,} bytes), bundle id {result.payload_sha256[:16]}"
    )
    _print_manifest(summary)
    _print_golden(result.golden)
    if result.health:
        health = result.health
        outputs = ", ".join(health["outputs"]) or "none (no output has a role in the spec, so only inputs)"
        click.echo(
            f"health profile: {health['samples']} sample(s); inputs {', '.join(health['inputs']) or 'none'}; "
            f"outputs {outputs}"
        )
    for note in result.notes:
        click.echo(f"note: {note}")


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 1 << 20}


def parse_bytes(text: str) -> int:
    """`262144`, `256KiB`, `2MB`, `1.5MiB` -> bytes (what --golden-budget takes)."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise click.BadParameter(
            f"{text!r}: expected bytes such as 262144, 256KiB or 2MB", param_hint="--golden-budget"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise click.BadParameter(f"{text!r}: must be at least 1 byte", param_hint="--golden-budget")
    return value


def _print_golden(golden: dict[str, Any] | None) -> None:
    if not golden or "error" in golden:
        if golden:
            click.echo(f"golden: {golden['error']}")
        return
    stored = ", ".join(
        f"{name} {info.get('dtype', '?')}"
        + (f" ({info['selected']:,} elements/sample)" if info.get("selected") else "")
        for name, info in golden.get("outputs", {}).items()
    )
    budget = golden.get("budget_bytes")
    click.echo(
        f"golden: {golden['samples']} of {golden['samples_offered']} samples, {golden['bytes']:,} bytes "
        + (f"(budget {budget:,})" if budget is not None else "(no budget recorded)")
        + (f"; outputs {stored}" if stored else "")
    )


@click.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path), help="Private key that co-signs.")
@click.option("--passphrase-env", metavar="VAR", help=PASSPHRASE_HELP)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here (default: replace BUNDLE).")
@json_option
@handle_errors
def sign(
    bundle_path: Path, key: Path, passphrase_env: str | None, output: Path | None, as_json: bool
) -> None:
    """Add a signature to a bundle (.ekb or directory) for k-of-n verification.

    Every file is hashed and checked against the signed statement before the new signature is added, so
    the co-signer vouches only for bytes it has seen.
    """
    from converters._files import atomic_output
    from signing.archive import member_order, write_ekb
    from signing.envelope import add_signature
    from signing.keys import load_private_key
    from signing.manifest import SIGNATURE_FILE
    from signing.verify import unsafe_extract_unverified

    private = load_private_key(key, _passphrase(passphrase_env))
    if not bundle_path.exists():
        raise click.ClickException(f"{bundle_path}: no such bundle file or directory")
    if bundle_path.is_dir():
        target = output or bundle_path
        if target != bundle_path:
            raise click.UsageError("a bundle directory is co-signed in place; omit -o")
        _check_directory_contents(bundle_path)
        signed = add_signature((bundle_path / SIGNATURE_FILE).read_bytes(), private)
        with atomic_output(bundle_path / SIGNATURE_FILE) as tmp:
            tmp.write_bytes(signed)
        if as_json:
            emit_result(_signed_summary(bundle_path, signed, private))
            return
        click.echo(f"added a signature to {bundle_path / SIGNATURE_FILE}")
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-sign-") as tmp_dir:
        extracted = Path(tmp_dir) / "bundle"
        copy = unsafe_extract_unverified(bundle_path, extracted)
        signature = extracted / SIGNATURE_FILE
        signature.chmod(0o600)
        signed = add_signature(signature.read_bytes(), private)
        signature.write_bytes(signed)
        with atomic_output(output or bundle_path) as out:
            write_ekb(extracted, member_order(copy.manifest), out)
    if as_json:
        emit_result(_signed_summary(output or bundle_path, signed, private))
        return
    click.echo(f"added a signature; wrote {output or bundle_path}")


def _signed_summary(path: Path, signature: bytes, private: Any) -> dict[str, Any]:
    """What `sign --json` reports: where, how many signatures now, and the new signer's key id."""
    from signing.keys import key_id

    document = json.loads(signature)
    return {
        "path": str(path),
        "signatures": len(document["dsseEnvelope"]["signatures"]),
        "key_id": key_id(private.public_key()),
    }


def _check_directory_contents(path: Path) -> None:
    from signing.envelope import signed_payload
    from signing.manifest import SIGNATURE_FILE, parse_statement
    from signing.strict_json import parse_strict
    from signing.verify import check_directory_contents

    payload = signed_payload((path / SIGNATURE_FILE).read_bytes())
    manifest = parse_statement(parse_strict(payload, what="signed statement", max_bytes=1 << 20))
    check_directory_contents(path, manifest)


@click.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option(
    "--pubkey",
    "pubkeys",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Pinned public key (repeat for k-of-n).",
)
@click.option(
    "--threshold",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="How many distinct pinned keys must have signed.",
)
@click.option("--hardware-id", help="Refuse a bundle not built for this hardware id.")
@click.option("--release-floor", type=click.IntRange(0), help="Refuse a release_counter below this.")
@json_option
@handle_errors
def verify(
    bundle_path: Path,
    pubkeys: tuple[Path, ...],
    threshold: int,
    hardware_id: str | None,
    release_floor: int | None,
    as_json: bool,
) -> None:
    """Verify a bundle (.ekb streamed in one pass, or a directory) against pinned public keys."""
    from signing.keys import load_public_key
    from signing.verify import VerifyPolicy, verify_directory, verify_ekb

    keys = [load_public_key(p) for p in pubkeys]
    policy = VerifyPolicy(threshold=threshold, hardware_id=hardware_id, release_floor=release_floor)
    if bundle_path.is_dir():
        result = verify_directory(bundle_path, keys, policy=policy)
    else:
        if not bundle_path.is_file():
            raise click.ClickException(f"{bundle_path}: no such bundle file or directory")
        result = verify_ekb(bundle_path, keys, policy=policy)
    summary = _manifest_summary(result.manifest)
    summary.update({"verified": True, "bundle_id": result.payload_sha256, "signers": list(result.signer_ids)})
    if as_json:
        emit_result(summary)
        return
    click.echo(
        f"verified: {bundle_path} signed by {len(result.signer_ids)} pinned key(s) "
        f"(threshold {threshold}); bundle id {result.payload_sha256[:16]}"
    )
    _print_manifest(summary)


@click.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@json_option
@handle_errors
def inspect(bundle_path: Path, as_json: bool) -> None:
    """Show a bundle's manifest, files, runtime, parity summary and signatures (NOT verified: use verify)."""
    from signing.envelope import signed_payload
    from signing.manifest import parse_statement
    from signing.strict_json import parse_strict

    signature, parity, golden, archive_sizes = _read_small_members(bundle_path)
    payload = signed_payload(signature)
    manifest = parse_statement(parse_strict(payload, what="signed statement", max_bytes=1 << 20))
    document = json.loads(signature)
    summary = _manifest_summary(manifest)
    summary["verified"] = False
    summary["signatures"] = len(document["dsseEnvelope"]["signatures"])
    summary["first_signer_hint"] = document["verificationMaterial"]["publicKey"].get("hint", "")
    summary["archive_sizes"] = archive_sizes
    if parity is not None:
        report = json.loads(parity)
        summary["parity"] = {
            "passed": report.get("passed"),
            "samples": report.get("samples"),
            "outputs": [
                {
                    **{k: o.get(k) for k in ("name", "agreement", "sqnr_db", "accuracy_drop_pp")},
                    # a scores output judged with its detection output: its SQNR is shown, not gated
                    **({"judged_with": o["judged_with"]} if o.get("judged_with") else {}),
                }
                for o in report.get("outputs", [])
            ],
        }
    summary["golden"] = _golden_summary(golden, archive_sizes)
    if as_json:
        emit_result(summary)
        return
    click.echo(f"{bundle_path}: NOT verified (run `edgekit verify --pubkey KEY` to trust it)")
    click.echo(
        f"signatures: {summary['signatures']}, first signer key id (hint) {summary['first_signer_hint'][:16]}"
    )
    _print_manifest(summary)
    _print_golden(summary["golden"])
    if parity is not None:
        for output in summary["parity"]["outputs"]:
            agreement = output["agreement"]
            click.echo(
                f"parity {output['name']}: agreement "
                f"{'n/a' if agreement is None else f'{100 * agreement:.2f}%'}, "
                f"SQNR {output['sqnr_db']:.1f} dB ({summary['parity']['samples']} samples, "
                f"{'PASS' if summary['parity']['passed'] else 'FAIL'})"
                + (
                    f"; judged with its detection output {output['judged_with']!r}, not by its own SQNR"
                    if output.get("judged_with")
                    else ""
                )
            )


def _golden_summary(golden: bytes | None, sizes: dict[str, int]) -> dict[str, Any] | None:
    """Figures of the golden vectors (from golden.json and the archive's member sizes; unverified)."""
    if golden is None:
        return None
    try:
        document = json.loads(golden)

        def entry(value: Any) -> dict[str, Any]:
            file = value["file"] if isinstance(value, dict) else value
            return {"file": file, "selected": value.get("select") if isinstance(value, dict) else None}

        storage = document.get("storage", {})
        return {
            "samples": document["samples"],
            "samples_offered": storage.get("samples_offered", document["samples"]),
            "budget_bytes": storage.get("budget_bytes"),
            "bytes": sum(size for name, size in sizes.items() if name.startswith("golden/")),
            "images": len(document.get("images", [])),
            "outputs": {
                name: {**entry(value), **storage.get("outputs", {}).get(name, {})}
                for name, value in document.get("outputs", {}).items()
            },
            "tolerance": document.get("tolerance"),
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"error": "golden/golden.json is unreadable"}


def _read_small_members(path: Path) -> tuple[bytes, bytes | None, bytes | None, dict[str, int]]:
    from signing.envelope import MAX_SIGNATURE_BYTES
    from signing.errors import FormatError

    if path.is_dir():
        signature = (path / "model.sig").read_bytes()[: MAX_SIGNATURE_BYTES + 1]
        parity_path = path / "parity.json"
        parity = parity_path.read_bytes() if parity_path.is_file() else None
        golden_path = path / "golden" / "golden.json"
        golden = golden_path.read_bytes()[: 1 << 20] if golden_path.is_file() else None
        sizes = {
            p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()
        }
        return signature, parity, golden, sizes
    if not path.is_file():
        raise click.ClickException(f"{path}: no such bundle file or directory")
    signature_bytes: bytes | None = None
    parity_bytes: bytes | None = None
    golden_bytes: bytes | None = None
    small = ("model.sig", "parity.json", "golden/golden.json")
    sizes = {}
    try:
        with tarfile.open(path, mode="r|") as archive:
            for member in archive:
                sizes[member.name] = member.size
                if member.isreg() and member.name in small and member.size <= 16 << 20:
                    stream = archive.extractfile(member)
                    data = stream.read() if stream is not None else b""
                    if member.name == "model.sig":
                        signature_bytes = data
                    elif member.name == "parity.json":
                        parity_bytes = data
                    else:
                        golden_bytes = data
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FormatError(f"{path}: not a readable .ekb archive ({e})") from e
    if signature_bytes is None:
        raise FormatError(f"{path}: has no model.sig")
    return signature_bytes, parity_bytes, golden_bytes, sizes


def _manifest_summary(manifest: Any) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "release_counter": manifest.release_counter,
        "hardware_ids": list(manifest.hardware_ids),
        "created": manifest.created,
        "runtime": {
            "engine": manifest.runtime.engine,
            "min_version": manifest.runtime.min_version,
            "opset": manifest.runtime.opset,
        },
        "entrypoint": manifest.entrypoint,
        "files": [
            {"name": e.name, "size": e.size, "role": e.role, "sha256": e.sha256}
            for e in manifest.ordered_files()
        ],
    }


def _print_manifest(summary: dict[str, Any]) -> None:
    runtime = summary["runtime"]
    opset = f", opset {runtime['opset']}" if runtime["opset"] is not None else ""
    hardware = ", ".join(summary["hardware_ids"]) or "any"
    click.echo(
        f"{summary['name']} {summary['version']} (release {summary['release_counter']}), "
        f"created {summary['created']}, hardware: {hardware}"
    )
    click.echo(
        f"runtime: {runtime['engine']} >= {runtime['min_version']}{opset}; entrypoint {summary['entrypoint']}"
    )
    for entry in summary["files"]:
        click.echo(f"  {entry['size']:>12,}  {entry['role']:<13} {entry['name']}")
