"""Every hint the CLI prints names options that exist on the command that prints it.

Two checks: a static scan of the message strings in the converters and the command modules against
click's option lists of the commands that can print them, and (tests/conftest.py) a check of the output of
every CliRunner invocation in the suite.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgekit.cli import COMMANDS, cli
from tests.edgekit.hints import command_options, mentioned_options, unknown_options

ROOT = Path(__file__).resolve().parents[2]
DATA_USERS = ("convert", "parity", "quantize", "bundle")  # every command that reads data through converters
SIGNATURE_USERS = ("convert", "parity", "quantize")  # the commands with --batch-axis and --state

# Which commands can print a library module's messages (modules not listed: every data user).
PRINTED_BY: dict[str, tuple[str, ...]] = {
    "converters/export.py": ("convert",),
    "converters/tf_source.py": ("convert", "quantize"),
    "converters/sklearn_export.py": ("convert",),
    "converters/torch_export.py": ("convert",),
    "converters/quantize.py": ("quantize",),
    "converters/quantize_onnx.py": ("quantize",),
    "converters/fp16.py": ("quantize",),
    "converters/strategies.py": ("quantize",),
    "converters/tflite.py": ("quantize",),
    "converters/repair.py": ("quantize",),
    "converters/localize.py": ("quantize",),
    "converters/latency.py": ("quantize",),
    "converters/signature.py": SIGNATURE_USERS,  # it echoes --batch-axis / --state values the user gave
    # Role messages need declared roles (--role, parity and quantize); convert's check declares none.
    "converters/parity.py": ("parity", "quantize"),
    "converters/roles.py": ("parity", "quantize"),
    "converters/role_metrics.py": ("parity", "quantize"),
    "edgekit/bundle_build.py": ("bundle",),
    "edgekit/runtime_requirements.py": ("bundle",),
}


def _options(names: tuple[str, ...]) -> list[set[str]]:
    return [command_options(cli.get_command(None, name)) for name in names]  # type: ignore[arg-type]


def _strings(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, text, is_hint) for every string literal; f-strings joined; `with_hints` dicts marked."""
    return [(line, text, is_hint) for _node, line, text, is_hint in _string_nodes(tree)]


def _string_nodes(tree: ast.AST) -> list[tuple[ast.AST, int, str, bool]]:
    """(node, line, text, is_hint) for every string literal (see `_strings`)."""
    hint_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if isinstance(k, ast.Constant)]
            if keys and all(isinstance(k.value, str) and k.value.startswith("--") for k in keys):
                hint_nodes |= {
                    id(n) for n in ast.walk(node)
                }  # option -> hint: filtered per command at run time
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Attribute) and t.attr == "option_hints" for t in node.targets
        ):
            hint_nodes |= {id(n) for n in ast.walk(node.value)}
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
            found.append((node, node.lineno, text, id(node) in hint_nodes))
            hint_nodes |= {id(v) for v in node.values}
            continue
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings  # documentation, not a message
            and not _inside_joined(node, tree)
        ):
            found.append((node, node.lineno, node.value, id(node) in hint_nodes))
    return found


def _inside_joined(node: ast.AST, tree: ast.AST) -> bool:
    parents = getattr(tree, "_joined_children", None)
    if parents is None:
        parents = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in ast.walk(n)}
        tree._joined_children = parents  # type: ignore[attr-defined]
    return id(node) in parents


def _command_modules() -> dict[str, tuple[str, ...]]:
    modules: dict[str, list[str]] = {}
    for name, (module, _attribute, _help) in COMMANDS.items():
        modules.setdefault(module.replace(".", "/") + ".py", []).append(name)
    return {path: tuple(names) for path, names in modules.items()}


def _scanned() -> list[tuple[str, tuple[str, ...]]]:
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "converters").glob("*.py"))]
    files += ["edgekit/bundle_build.py", "edgekit/runtime_requirements.py"]
    command_modules = _command_modules()
    scanned = [(f, PRINTED_BY.get(f, DATA_USERS)) for f in files]
    scanned += sorted(command_modules.items())
    return scanned


@pytest.mark.parametrize(("path", "printers"), _scanned(), ids=[p for p, _ in _scanned()])
def test_message_strings_name_only_options_of_the_commands_that_print_them(
    path: str, printers: tuple[str, ...]
) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    every = set().union(*_options(tuple(COMMANDS)))
    per_command = _options(printers)
    is_command_module = path.startswith("edgekit/commands/")
    problems = []
    for line, text, is_hint in _strings(tree):
        for option in sorted(mentioned_options(text)):
            if is_hint or text.lstrip().startswith(option):
                ok = option in every  # a hint (filtered per command at run time), or an echo
            elif is_command_module:
                ok = any(option in options for options in per_command)  # defined in this module
            else:
                ok = all(option in options for options in per_command)
            if not ok:
                problems.append(f"{path}:{line}: {option} in {text.strip()[:80]!r} (printed by {printers})")
    assert not problems, "\n".join(problems)


def _callback_options() -> dict[tuple[str, str], set[str]]:
    """(module, qualified name) of each command's function -> the options usable with that command: its
    own and its parent groups' (`rollout --server URL status`). A function behind several commands (a
    factory's, an alias) gets the options they all have."""
    found: dict[tuple[str, str], set[str]] = {}

    def visit(command: click.Command, context: click.Context, inherited: set[str]) -> None:
        own = {"--help"} | {
            o for p in command.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)
        }
        if command.callback is not None:
            function = inspect.unwrap(command.callback)
            key = (function.__module__, function.__qualname__)
            found[key] = found[key] & (own | inherited) if key in found else own | inherited
        if isinstance(command, click.Group):
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                if sub is not None:
                    visit(sub, click.Context(sub, parent=context, info_name=name), own | inherited)

    visit(cli, click.Context(cli, info_name="edgekit"), set())
    return found


def _functions(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """(qualified name, node) of every function in a module, outer functions before inner ones."""
    found: list[tuple[str, ast.AST]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append((name, child))
                visit(child, f"{name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


@pytest.mark.parametrize("path", sorted(_command_modules()), ids=sorted(_command_modules()))
def test_a_commands_own_messages_name_only_options_of_that_command(path: str) -> None:
    """Stricter than the module-wide scan above: a string inside a command's function (its body and its
    option decorators) may name only that command's options (and its parent groups')."""
    module = path.removesuffix(".py").replace("/", ".")
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    options = _callback_options()
    owner: dict[int, str] = {}  # string node -> the innermost command function holding it
    for name, function in _functions(tree):
        if (module, name) in options:
            owner.update({id(n): name for n in ast.walk(function)})
    assert set(owner.values()), f"{path}: no command function found; the scan would check nothing"
    problems = []
    for node, line, text, is_hint in _string_nodes(tree):
        command = owner.get(id(node))
        if command is None or is_hint:  # helpers and runtime-filtered hints: the module-wide scan
            continue
        for option in sorted(mentioned_options(text)):
            if option not in options[(module, command)] and not text.lstrip().startswith(option):
                problems.append(f"{path}:{line}: {command}() names {option} in {text.strip()[:80]!r}")
    assert not problems, "\n".join(problems)


def test_the_scan_finds_a_made_up_option() -> None:
    assert mentioned_options("fix it with --no-such-option, or `edgekit quantize --mode fp16`") == {
        "--no-such-option"
    }
    assert unknown_options(["bundle", "m.onnx"], "Error: pass --sample DATA") == {"--sample"}
    assert unknown_options(["convert", "m.onnx"], "Error: pass --sample DATA") == set()


def test_hints_are_shown_only_on_commands_that_have_the_option(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    model = tmp_path / "m.onnx"
    _tiny_model(model)
    parity = CliRunner().invoke(cli, ["parity", str(model), str(model), "--data", str(folder)])
    convert = CliRunner().invoke(
        cli, ["convert", str(model), "-o", str(tmp_path / "o.onnx"), "--sample", str(folder)]
    )
    assert parity.exit_code == convert.exit_code == 1
    assert "needs a preprocessing spec" in parity.output and "--preprocess SPEC.json" in parity.output
    assert "needs a preprocessing spec" in convert.output and "--preprocess" not in convert.output


def _tiny_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
