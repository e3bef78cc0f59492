"""A newcomer's first hour: the getting-started page's first run, executed as written.

The page (docs/getting-started.md, "Try the whole path on a small model first") holds a `train.py` and the
commands that take its scikit-learn classifier through convert, preprocess init, quantize, keygen, bundle,
verify, and the device runtime's install and predict. This test copies them from the page, not from here,
and runs them in a fresh folder under tmp_path with the real command lines (`python -m edgekit`, `python -m
device_runtime`) in subprocesses, as a user's shell would. Each step must exit 0, say what the page
promises, print no traceback and no third-party noise (stderr holds only edgekit's own `note:` lines), and
write only the files the page names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("onnxruntime.quantization")

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "getting-started.md"
SECTION = "## Try the whole path on a small model first"
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)

# What each step must say on stdout (regular expressions), keyed by the command's first words.
EXPECTED: dict[str, list[str]] = {
    "python train.py": [],
    "edgekit convert": [
        r"^wrote model\.onnx \([\d,]+ bytes\) via sklearn->onnx",
        r"^parity with the source on \d+ samples: top-1 agreement 100\.0%.*\[PASS\]$",
    ],
    "edgekit preprocess": [
        r"^wrote preprocess\.json from the inputs of model\.onnx$",
        r"input 'input': tensor float32",
    ],
    "edgekit quantize": [
        r"^parity on 297 samples: PASS$",
        r"probabilities \(classification\): agreement",
        r"^chosen: ",
        r"^wrote model\.int8\.onnx \([\d,]+ bytes, [\d.]+x smaller\)$",
    ],
    "edgekit keygen": [r"^wrote keys/release\.key \(private, mode 0600\) and keys/release\.pub$"],
    "edgekit bundle": [r"^wrote digits-1\.0\.0\.ekb \([\d,]+ bytes\), bundle id [0-9a-f]{16}$", r"^golden: "],
    "edgekit verify": [r"^verified: digits-1\.0\.0\.ekb signed by 1 pinned key"],
    "python -m device_runtime install": [r"^installed digits 1\.0\.0 into slot a; self-test passed"],
    "python -m device_runtime predict": [r"^digits 1\.0\.0: [\d.]+ ms$", r"^  \d: [01]\.\d{4}$"],
}
# The files the page's commands write (the store is the device runtime's folder).
WRITTEN = {
    "train.py", "model.pkl", "calib.npy", "eval.npy", "eval_labels.npy", "one.npy", "labels.txt",
    "model.onnx", "preprocess.json", "model.int8.onnx", "parity.json", "parity.html", "keys",
    "digits-1.0.0.ekb", "store",
}  # fmt: skip


def _section(text: str) -> str:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else len(text)]


def _page_blocks() -> tuple[str, list[str]]:
    """The page's train.py and its command lines (continuations joined)."""
    blocks = _FENCE.findall(_section(PAGE.read_text(encoding="utf-8")))
    script = next(body for lang, body in blocks if lang == "python")
    shell = next(body for lang, body in blocks if lang == "")
    commands = [line.strip() for line in re.sub(r"\\\n\s*", " ", shell).splitlines() if line.strip()]
    return script, commands


def _step(words: list[str]) -> str:
    """The EXPECTED key of one command line."""
    if words[:3] == ["python", "-m", "device_runtime"]:
        return f"python -m device_runtime {next(w for w in words if w in ('install', 'predict'))}"
    return " ".join(words[:2])


def _argv(words: list[str]) -> list[str]:
    if words[0] == "edgekit":
        return [sys.executable, "-m", "edgekit", *words[1:]]
    assert words[0] == "python", f"the first-run section runs only edgekit and python, not {words[0]!r}"
    return [sys.executable, *words[1:]]


@pytest.mark.slow
def test_the_first_run_on_the_getting_started_page_works_as_written(tmp_path: Path) -> None:
    script, commands = _page_blocks()
    assert [_step(shlex.split(c)) for c in commands] == list(EXPECTED), "the page's steps changed"
    walk = tmp_path / "walk"
    walk.mkdir()
    (walk / "train.py").write_text(script, encoding="utf-8")
    cwd_before = sorted(os.listdir())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "HOME": str(tmp_path / "home"),  # nothing lands in the user's home either
    }
    for command in commands:
        words = shlex.split(command)
        done = subprocess.run(
            _argv(words), cwd=walk, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        where = f"`{command}` (exit {done.returncode})\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        assert done.returncode == 0, where
        assert "Traceback" not in done.stdout + done.stderr, where
        noise = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("note: ")]
        assert not noise, f"third-party noise or an unlabelled line on stderr: {noise}\n{where}"
        lines = done.stdout.splitlines()
        for pattern in EXPECTED[_step(words)]:
            assert any(re.search(pattern, line) for line in lines), f"no line matches {pattern!r}: {where}"
    assert {p.name for p in walk.iterdir()} == WRITTEN
    assert sorted(os.listdir()) == cwd_before, "a step wrote into the current directory"


def test_the_first_run_section_reads_only_files_made_before() -> None:
    """Every file a command reads is made by train.py or by an earlier command on the page."""
    script, commands = _page_blocks()
    made = set(re.findall(r"\"([\w.-]+\.(?:npy|pkl|txt))\"", script))
    for command in commands[1:]:  # after `python train.py`
        words = shlex.split(command)
        writes = ("-o", "--output", "--report", "--html")
        written = {words[i + 1] for i, w in enumerate(words[:-1]) if w in writes}
        if words[:2] == ["edgekit", "keygen"]:
            folder, name = words[words.index("-o") + 1], words[words.index("--name") + 1]
            written = {f"{folder}/{name}.key", f"{folder}/{name}.pub"}
        for word in words:
            if re.fullmatch(r"[\w/.-]+\.(npy|pkl|txt|onnx|json|key|pub|ekb)", word) and word not in written:
                assert word in made, f"`{command}` reads {word}, which nothing before it on the page makes"
        made |= written


def test_a_linear_pipeline_has_nothing_to_quantize_and_edgekit_says_to_bundle_the_float_model(
    tmp_path: Path,
) -> None:
    """A newcomer's LogisticRegression: skl2onnx lists its default opset twice, which onnxruntime's quantizer
    refused ("Failed to find proper ai.onnx domain"); its ai.onnx.ml operators have no int8 form."""
    import pickle

    import numpy as np
    from click.testing import CliRunner
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgekit.cli import cli

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[:1500], y[:1500])
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    np.save(tmp_path / "calib.npy", x[:64])
    runner = CliRunner()
    done = runner.invoke(cli, ["convert", str(tmp_path / "model.pkl"), "-o", str(tmp_path / "model.onnx")])
    assert done.exit_code == 0, done.output
    import onnx

    domains = [entry.domain for entry in onnx.load(str(tmp_path / "model.onnx")).opset_import]
    assert sorted(domains) == sorted(set(domains))
    args = ["quantize", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "model.int8.onnx")]
    done = runner.invoke(cli, [*args, "--calibration", str(tmp_path / "calib.npy"), "--skip-latency"])
    assert done.exit_code == 0, done.output
    assert "ai.onnx.ml.LinearClassifier" in done.stderr
    assert "no node of model.onnx could be quantized, so model.int8.onnx is a float model" in done.stderr
    assert re.search(r"^wrote .*model\.int8\.onnx \([\d,]+ bytes, [\d.]+x larger\)$", done.stdout, re.M)


def test_a_failed_quantize_says_where_its_report_went_and_what_the_repair_reached(tmp_path: Path) -> None:
    """A gate the model cannot pass: the reports are written, the note says so, the repair line gives the
    best set it tried (not "x -> x"), and the hints name only options of `edgekit quantize`."""
    import json
    import pickle

    import numpy as np
    from click.testing import CliRunner
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgekit.cli import cli

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=300, random_state=0))
    model.fit(x[:1500], y[:1500])
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    np.save(tmp_path / "calib.npy", x[:200])
    runner = CliRunner()
    done = runner.invoke(cli, ["convert", str(tmp_path / "model.pkl"), "-o", str(tmp_path / "model.onnx")])
    assert done.exit_code == 0, done.output
    report = tmp_path / "parity.json"
    args = ["quantize", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "model.int8.onnx")]
    args += ["--calibration", str(tmp_path / "calib.npy"), "--role", "probabilities=classification"]
    done = runner.invoke(cli, [*args, "--min-sqnr", "90", "--skip-latency", "--report", str(report)])
    assert done.exit_code == 1, done.output
    assert not (tmp_path / "model.int8.onnx").exists()
    assert json.loads(report.read_text())["passed"] is False
    assert f"note: no model was written; this run's report is in {report}" in done.stderr
    repair = [line for line in done.stdout.splitlines() if line.startswith("repair: ")]
    assert len(repair) == 1 and re.search(r"after (1 evaluation|\d+ evaluations) \(", repair[0]), done.stdout
    assert re.search(r"^  SQNR [\d.]+ dB before the repair; the best set tried, \d+ node", done.stdout, re.M)
    options = set(re.findall(r"--[a-z][a-z-]+", done.stderr.split("Error: ", 1)[1]))
    import click

    command = cli.get_command(click.Context(cli), "quantize")
    assert command is not None
    assert options <= {opt for param in command.params for opt in param.opts}, options
