"""The documentation cannot drift from the code: its commands exist, its links resolve, its specs parse.

Reads README.md and docs/*.md as text, checks every `edgekit ...` command line against the real click tree
(`edgekit.cli.cli`), every relative link against the files of the checkout, and every JSON example of the
preprocessing spec reference with the device's own parser. No network, no build of the site (scripts/test.sh
runs `mkdocs build --strict` for that).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import click
import pytest

from device_runtime.preprocess import (
    ImageInputSpec,
    OutputSpec,
    Quantization,
    TensorInputSpec,
    parse_spec,
)
from edgekit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
SPEC_PAGE = DOCS / "preprocessing-spec.md"

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
_INLINE = re.compile(r"`(edgekit [^`]+)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _code_lines(text: str) -> list[str]:
    """Command lines in fenced blocks (continuations joined, prompts and comments dropped)."""
    lines: list[str] = []
    for _, body in _FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = line.strip()
            line = line.removeprefix("$ ")
            lines.append(line)
    return lines


def _commands(text: str) -> list[str]:
    """Every `edgekit ...` invocation on the page, from code blocks and inline code."""
    found: list[str] = []
    for line in _code_lines(text) + _INLINE.findall(text):
        for part in re.split(r"&&|\|\||;|\|", line):
            part = part.strip()
            if part.startswith("edgekit "):
                found.append(part)
    return found


def _tokens(command: str) -> list[str]:
    """Shell words of a command, without a trailing comment, with documentation brackets removed."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    # `[--hardware-id ID]` marks an optional part in the docs: check what is inside the brackets.
    return [w.strip("[]") for w in words if w.strip("[]")]


def _check(command: str) -> str | None:
    """None when the command names an existing (sub)command and only its options; else what is wrong."""
    words = _tokens(command)[1:]
    node: click.Command = cli
    path = ["edgekit"]
    ctx = click.Context(cli, info_name="edgekit")
    while words:
        word = words.pop(0)
        if word in ("...", "…") or (word.isupper() and not word.startswith("-")):
            break  # "edgekit ..." or "edgekit COMMAND --help" in prose: a placeholder for any command
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            option = next((p for p in node.params if isinstance(p, click.Option) and name in p.opts), None)
            if option is None and name not in ("--help", "-h"):
                return f"{' '.join(path)} has no option {name}"
            # An option's value follows it (prose may name an option alone: `edgekit quantize --report`).
            if option is not None and not option.is_flag and "=" not in word and not option.count and words:
                words.pop(0)
            continue
        if isinstance(node, click.Group):
            sub = node.get_command(ctx, word)
            if sub is None:
                return f"{' '.join(path)} has no command {word!r}"
            node = sub
            path.append(word)
            ctx = click.Context(sub, info_name=word, parent=ctx)
    return None


def _all_commands() -> list[tuple[str, str]]:
    return [(page.name, cmd) for page in PAGES for cmd in _commands(page.read_text(encoding="utf-8"))]


def test_the_pages_show_edgekit_commands_at_all() -> None:
    pages = {page for page, _ in _all_commands()}
    assert {"README.md", "getting-started.md", "deployment.md"} <= pages


@pytest.mark.parametrize(("page", "command"), _all_commands())
def test_every_documented_command_exists_with_the_options_shown(page: str, command: str) -> None:
    problem = _check(command)
    assert problem is None, f"{page}: `{command}`: {problem}"


def test_the_command_checker_refuses_what_does_not_exist() -> None:
    assert _check("edgekit rollout replay") is not None  # no such subcommand
    assert _check("edgekit keygen -o keys --force") is not None  # no such option on keygen
    assert _check("edgekit quantize m.onnx -o q.onnx --calibration c.npy --mode dynamic") is None
    assert _check("edgekit --debug rollout --server http://h:8080 status --json") is None


def _links() -> list[tuple[Path, str]]:
    found = []
    for page in PAGES:
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in _LINK.findall(text):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#"):
                found.append((page, target))
    return found


def test_every_relative_link_resolves() -> None:
    missing = []
    for page, target in _links():
        path = target.split("#", 1)[0]
        if not (page.parent / path).resolve().exists():
            missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, missing
    assert _links(), "the pages link to one another"


def test_no_page_points_outside_the_checkout() -> None:
    for page in [*PAGES, ROOT / "mkdocs.yml"]:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text and "/work/" not in text, page.name
    for page, target in _links():
        assert ROOT in (page.parent / target.split("#", 1)[0]).resolve().parents, f"{page.name}: {target}"


def _spec_examples() -> list[str]:
    return [body for lang, body in _FENCE.findall(SPEC_PAGE.read_text(encoding="utf-8")) if lang == "json"]


def test_the_spec_reference_has_examples() -> None:
    assert len(_spec_examples()) >= 5


@pytest.mark.parametrize("example", _spec_examples())
def test_every_spec_example_parses_with_the_device_parser(example: str) -> None:
    spec = parse_spec(json.loads(example))
    assert spec.inputs


def test_the_spec_reference_names_every_field_of_the_format() -> None:
    text = SPEC_PAGE.read_text(encoding="utf-8")
    for cls in (ImageInputSpec, TensorInputSpec, OutputSpec, Quantization):
        for field in dataclasses.fields(cls):
            assert f"`{field.name}`" in text, f"{cls.__name__}.{field.name} is not documented"
    assert "`schema`" in text and "`inputs`" in text and "`outputs`" in text


GATES_PAGE = DOCS / "gates.md"


def test_every_gate_configuration_on_the_gates_page_loads_as_the_server_loads_it(tmp_path: Path) -> None:
    from edgekit.commands.serve import load_gates

    blocks = [body for lang, body in _FENCE.findall(GATES_PAGE.read_text(encoding="utf-8")) if lang == "json"]
    assert blocks
    for i, body in enumerate(blocks):
        path = tmp_path / f"gates-{i}.json"
        path.write_text(body, encoding="utf-8")
        load_gates(path)  # raises on an unknown field or an out-of-range value


_PAIRED_ROWS = (("alpha", "beta"), ("z_pass", "z_rollback"))  # documented in one row: | `a`, `b` | x, y |


def test_the_gates_page_documents_every_gate_field_with_its_default() -> None:
    from edgekit.rollout import GateConfig

    text = GATES_PAGE.read_text(encoding="utf-8")
    rows = text.splitlines()
    defaults = GateConfig()
    paired = {name for pair in _PAIRED_ROWS for name in pair}
    for field in dataclasses.fields(GateConfig):  # the label-free gates' fields included
        assert f"`{field.name}`" in text, f"GateConfig.{field.name} is not documented"
        value = getattr(defaults, field.name)
        if isinstance(value, int | float) and field.name not in paired:
            row = next((line for line in rows if line.startswith(f"| `{field.name}` |")), None)
            assert row is not None, f"{field.name} has no row in a defaults table"
            assert f"| {value:g} |" in row.replace(".0 |", " |"), f"{field.name}: {value:g} not in {row}"
    for first, second in _PAIRED_ROWS:
        row = next((line for line in rows if line.startswith(f"| `{first}`, `{second}` |")), None)
        assert row is not None, f"{first} and {second} have no row in a defaults table"
        values = f"| {getattr(defaults, first):g}, {getattr(defaults, second):g} |"
        assert values in row.replace(".0 |", " |"), f"{first}, {second}: {values} not in {row}"
    for percent, hours in defaults.stage_min_hours:
        assert f"{percent}%: {hours:g}" in text, f"stage_min_hours: {percent}%: {hours:g} is not documented"


SCRIPTING_PAGE = DOCS / "scripting.md"


def _json_documents(page: Path) -> list[dict[str, object]]:
    """The whole JSON objects in a page's plain code blocks (cut examples, marked `...`, are skipped)."""
    found = []
    for lang, body in _FENCE.findall(page.read_text(encoding="utf-8")):
        if lang in ("", "json") and body.lstrip().startswith("{") and "..." not in body:
            found.append(json.loads(body))
    return found


def test_the_scripting_page_shows_the_json_shape_the_cli_prints() -> None:
    from edgekit.commands._common import error_document

    documents = _json_documents(SCRIPTING_PAGE)
    assert any(d["ok"] is True for d in documents) and any(d["ok"] is False for d in documents)
    shape = error_document(click.ClickException("m"), command="verify")
    for document in documents:
        assert {"ok", "command"} <= document.keys(), document
        if document["ok"] is False:
            assert document.keys() == shape.keys(), document
            assert isinstance(document["error"], dict) and document["error"].keys() == shape["error"].keys()


def test_every_python_example_in_the_docs_compiles() -> None:
    for page in PAGES:
        for lang, body in _FENCE.findall(page.read_text(encoding="utf-8")):
            if lang == "python":
                compile(body, f"{page.name} example", "exec")


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
