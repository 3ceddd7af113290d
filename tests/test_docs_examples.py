"""Every example in README.md and docs/**/*.md is executed, by the doctests or by this file.

The rule, by the fenced block's language:

- ``python`` (and ``pycon``, ``py``): examples, written as doctests (``>>>`` prompts with their
  output). The ``docs`` nox session runs every page with pytest's doctest. A Python block without
  ``>>>`` would be shown but never run: ``test_python_blocks_are_doctests`` fails on it.
- ``console``: examples of the command line. Every ``$ convsv ...`` line is run here, in an empty
  directory, and must exit with status 0; the lines after it, up to the next ``$``, are its output
  and must match what it prints (doctest rules: ``...`` matches anything, whitespace is normalised;
  a command shown without output is checked for its exit status only).
  A command may name the files in ``STAND_INS``: small files of the same format that the test
  writes under that name (the stand-in ``resnet18_cifar.pt`` has a ResNet's layer names, not its
  size). Console blocks hold ``convsv`` commands only.
- ``bash``: instructions, not examples, and not run: installing, running nox, commands that need a
  GPU, a data set or a long run.
- ``text``: what a script printed, shown as is (the scripts in examples/ are run by the adapter tests).
"""

from __future__ import annotations

import collections
import doctest
import importlib
import importlib.util
import os
import re
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from convsv.cli import main

pytestmark = pytest.mark.backend("numpy")

ROOT = Path(__file__).resolve().parents[1]
PYTHON = {"python", "python3", "py", "pycon"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")


class Block(NamedTuple):
    path: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    lines: list[str]


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)]


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (MyST ``{code-block} python`` counts as python)."""
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, words = opening["fence"], opening["info"].split()
        language = words[0].lower() if words else ""
        if language in ("{code-block}", "{code}", "{sourcecode}") and len(words) > 1:
            language = words[1].lower()
        start, i = i, i + 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        found.append(Block(str(page.relative_to(ROOT)), start + 1, language, body))
        i += 1
    return found


def all_blocks(*languages: str) -> list[Block]:
    return [block for page in pages() for block in blocks(page) if block.language in languages]


def test_the_pages_are_found():
    names = {page.relative_to(ROOT).as_posix() for page in pages()}
    assert {"README.md", "docs/quickstart.md", "docs/cli.md"} <= names
    assert not any(name.startswith("docs/_build") for name in names)


def test_readme_blocks_paste_into_the_repl():
    """Python's interactive prompt ends a compound statement only at an empty line: each needs its `...`.

    A ``for`` or ``def`` whose body is followed directly by the next ``>>>`` runs under doctest
    but is a SyntaxError when the block is pasted into the REPL (which strips the prompts since 3.13).
    """
    unended = []
    for block in all_blocks(*PYTHON):
        if block.path != "README.md":
            continue
        statements = [line.lstrip() for line in block.lines if line.lstrip().startswith((">>>", "..."))]
        for i, line in enumerate(statements):
            opens = line.startswith(">>> @") or (
                line.startswith(">>>") and line.split("#")[0].rstrip().endswith(":")
            )
            if opens:
                j = i + 1
                while (
                    j < len(statements) and statements[j].startswith("...") and statements[j].strip() != "..."
                ):
                    j += 1
                if j < len(statements) and statements[j].strip() != "...":
                    unended.append(f"{block.path}:{block.line}: {line.strip()}")
    assert not unended, f"end these blocks with a bare `...` line before the next `>>>`: {unended}"


def test_python_blocks_are_doctests():
    unexecuted = [
        f"{block.path}:{block.line}"
        for block in all_blocks(*PYTHON)
        if not any(line.lstrip().startswith(">>>") for line in block.lines)
    ]
    assert not unexecuted, (
        "these ```python blocks have no `>>>`, so no doctest runs them: write them as doctests, "
        f"or include a script that a test runs: {unexecuted}"
    )


# --- the command line examples ---------------------------------------------------------------


class Command(NamedTuple):
    where: str  # path:line
    command: str
    output: str  # what the page shows it printing ("" when it shows nothing)


def commands(block: Block) -> list[Command]:
    found: list[Command] = []
    for offset, line in enumerate(block.lines, start=1):
        if line.startswith("$ "):
            found.append(Command(f"{block.path}:{block.line + offset}", line[2:].strip(), ""))
        elif found:
            last = found[-1]
            found[-1] = last._replace(output=last.output + line + "\n")
    return found


CONSOLE = all_blocks("console", "shell-session")
COMMANDS = [command for block in CONSOLE for command in commands(block)]


def test_console_blocks_hold_convsv_commands():
    assert COMMANDS, "no console examples found"
    for block in CONSOLE:
        assert commands(block), f"{block.path}:{block.line}: a console block without a `$ ` command"
    others = [c.where for c in COMMANDS if shlex.split(c.command, comments=True)[0] != "convsv"]
    assert not others, f"console blocks are run: show other commands in ```bash blocks: {others}"


def need(module: str) -> Any:
    """Import a package a command needs: skip without it, or fail where the run requires it (docs session)."""
    if os.environ.get("CONVSV_REQUIRE_FORMATS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def cifar_resnet() -> Any:
    """A tiny module with a CIFAR ResNet-18's layer names: conv1, then layer4.0.conv1/conv2."""
    nn = need("torch").nn
    block = collections.OrderedDict(
        conv1=nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        relu=nn.ReLU(),
        conv2=nn.Conv2d(16, 16, 3, padding=1, bias=False),
    )
    layers = collections.OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, padding=1, bias=False),
        relu=nn.ReLU(),
        layer4=nn.Sequential(nn.Sequential(block)),
    )
    return nn.Sequential(layers)  # torch.nn classes only: what weights_only=True loads


def write_torch_module(path: Path) -> None:
    need("torch").save(cifar_resnet(), path)


USER_MODELS = """
import torch
from torch import nn


class Small(nn.Module):  # a class of the user's own: its pickled instances are refused
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x.mean(1, keepdim=True) + self.conv2(torch.relu(self.conv1(x)))[:, :1]


def resnet():
    return Small()
"""


def write_state_dict_and_its_module(path: Path) -> None:
    """A state dict, and the ``mymodels.py`` whose ``resnet()`` builds its model, in the same folder."""
    torch = need("torch")
    source = path.parent / "mymodels.py"
    source.write_text(USER_MODELS)
    spec = importlib.util.spec_from_file_location("mymodels_stand_in", source)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.resnet().state_dict(), path)


def write_torchscript(path: Path) -> None:
    torch = need("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        torch.jit.script(cifar_resnet()).save(str(path))


def write_onnx(path: Path) -> None:
    torch = need("torch")
    need("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warnings
        torch.onnx.export(cifar_resnet(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False)


def write_keras(path: Path) -> None:
    if "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("KERAS_BACKEND", "jax")  # read once, at keras' first import
            need("keras")
    keras = need("keras")
    layers = keras.layers
    zeros = {"kernel_initializer": "zeros"}  # JAX compiles random initializers for seconds: set after
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(8, 3, padding="same", name="conv", **zeros),
            layers.Conv2D(8, 3, strides=2, padding="same", name="down", **zeros),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, **zeros),
        ]
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") / 8 for w in model.weights])
    with warnings.catch_warnings():
        # Keras' saving calls np.array(variable), which NumPy 2 deprecates (no `copy` keyword).
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept", DeprecationWarning)
        model.save(path)


def write_kernel(shape: tuple[int, ...]) -> Any:
    return lambda path: np.save(path, np.random.default_rng(0).standard_normal(shape) / 12)


# File names the console examples use, and how to write a small file of that format.
STAND_INS = {
    "weights.npy": write_kernel((32, 16, 3, 3)),  # OIHW, as PyTorch stores a Conv2d(16, 32, 3)
    "depthwise.npy": write_kernel((3, 3, 1, 32)),  # HWIO, one input channel per group
    "resnet18_cifar.pt": write_torch_module,
    "resnet18_scripted.pt": write_torchscript,
    "resnet_weights.pt": write_state_dict_and_its_module,
    "model.onnx": write_onnx,
    "classifier.keras": write_keras,
}


@pytest.mark.parametrize("example", COMMANDS, ids=[c.where for c in COMMANDS])
def test_console_example(example, tmp_path, monkeypatch, capsys):
    """The command, run as ``convsv.cli.main(argv)`` (what the ``convsv`` script calls) in this process.

    A fresh interpreter per command would cost seconds of imports each; tests/test_cli.py runs the
    installed script itself. ``> FILE`` is the one piece of shell the pages use: stdout goes to FILE.
    """
    words = shlex.split(example.command, comments=True)
    argv, target = words[1:], None
    if ">" in argv:
        argv, target = argv[: argv.index(">")], argv[argv.index(">") + 1]
    monkeypatch.chdir(tmp_path)
    for name in set(argv) & set(STAND_INS):
        STAND_INS[name](tmp_path / name)
    if "--backend" in argv:
        need(argv[argv.index("--backend") + 1])
    if "--plot" in argv or argv == ["analyze"]:  # the bundled model is plotted
        need("matplotlib")
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    out, err = capsys.readouterr()
    assert status == 0, f"{example.where}: `{example.command}` exited with {status}:\n{err}"
    if target is not None:
        (tmp_path / target).write_text(out)
        assert out, f"{example.where}: `{example.command}` wrote nothing"
        out = ""
    checker, flags = doctest.OutputChecker(), doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    if example.output.strip() and not checker.check_output(example.output, out, flags):
        diff = checker.output_difference(doctest.Example(example.command, example.output), out, flags)
        pytest.fail(f"{example.where}: `{example.command}` printed other output:\n{diff}")
