"""Every command in README.md and docs/*.md is run, so the docs cannot drift from the code.

What a page may hold, in fenced blocks:
- ```bash (or sh, shell): one command per line (`\\` continues a line, `#` starts a comment, `&&`
  chains commands);
- ```console: `$ command` lines, each followed by what it prints (`...` matches any text);
- ```python: a script; consecutive python blocks of a page (no shell block between them) are one
  script, so a page can explain a program piece by piece.
A block right after `<!-- docs-test: skip (reason) -->` (for what CI has not got: a TPU, a downloaded
model) is not run, but its `gtr-turbo` commands are still parsed and their configs loaded.

Commands understood: `gtr-turbo ARGS` (= `python -m gtr_turbo_jax ARGS`); `make train ENV=E
ARGS="..."` (= `gtr-turbo train --env=E ...`, the Makefile's recipe, checked here); `make TARGET` for
the set-up targets (`install`, `test`, ...: never run by this test; the target must exist); `python
FILE ...`. Anything else must sit in a skipped block.

Fast (the default suite):
- every `gtr-turbo` / `make train` command, skipped or not, parses with the CLI's parser, and the
  config of a `train` / `sft` command loads and validates;
- every console example runs in-process (training disabled: an example that would train fails) and
  prints what the page shows, exiting with status 2;
- python blocks compile; relative links resolve; `docs/config_reference.md` is what
  `docs/make_config_reference.py` writes, and every config key has a meaning.
Slow: the pages' commands and scripts run for real, in page order, in one scratch directory, with
`--smoke` added to `train` / `sft` (unless `--resume`) and `eval --episodes=N` cut to 4; each must
exit 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gtr_turbo_jax import cli

REPO = Path(__file__).resolve().parents[1]
# Run order of the slow session: later pages use runs that earlier ones made.
PAGES = ("README.md", "docs/index.md", "docs/quickstart.md", "docs/concepts.md",
         "docs/config_reference.md", "docs/environments.md", "docs/models.md", "docs/scaling.md",
         "docs/plots.md", "docs/troubleshooting.md", "docs/results.md", "docs/fidelity.md")  # fmt: skip
SHELL = ("bash", "sh", "shell")
SETUP_TARGETS = ("install", "install-all", "test", "test-slow", "test-all", "lint", "clean")
MAKE_TRAIN_RECIPE = "$(PY) -m gtr_turbo_jax train --env=$(ENV) $(ARGS)"
SCRATCH_LINKS = ("configs", "docs", "experiments", "Makefile")  # what commands refer to by path
FENCE = re.compile(r"^```([\w-]*)\s*$")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+)\)\s*-->")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    skip: str | None  # the reason, for a block marked skip

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Command:
    kind: str  # "cli" (gtr-turbo), "setup" (a make set-up target), "python"
    argv: tuple[str, ...]  # cli: gtr-turbo's arguments; python: the interpreter's
    where: str


def page_blocks(page: str) -> list[Block]:
    lines = (REPO / page).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        skip = SKIP.search(lines[before]) if before >= 0 else None
        text = "\n".join(lines[i + 1 : end])
        blocks.append(Block(page, i + 1, match.group(1), text, skip.group(1) if skip else None))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in page_blocks(page)]


def shell_lines(text: str) -> list[list[str]]:
    """The commands of a shell block as argv lists (comments dropped, `&&` split)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            part = tokens[: tokens.index("&&")] if "&&" in tokens else tokens
            commands.append(part)
            tokens = tokens[len(part) + 1 :]
    return commands


def console_examples(block: Block) -> list[tuple[list[str], str]]:
    """(argv, expected output) of each `$ command` of a console block."""
    examples: list[tuple[list[str], list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            examples.append((shlex.split(line[2:]), []))
        elif examples:
            examples[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"{block.where}: console output before any '$ ' command")
    return [(argv, "\n".join(out)) for argv, out in examples]


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def to_command(argv: list[str], where: str) -> Command | None:
    """What a documented command line is, or None for a command this test does not run."""
    if not argv:
        return None
    if argv[0] == "gtr-turbo":
        return Command("cli", tuple(argv[1:]), where)
    if argv[:3] == ["python", "-m", "gtr_turbo_jax"]:
        return Command("cli", tuple(argv[3:]), where)
    if argv[0] in ("python", "python3"):
        return Command("python", tuple(argv[1:]), where)
    if argv[0] == "make":
        target = argv[1] if len(argv) > 1 and "=" not in argv[1] else "install"
        assert target in makefile_targets(), f"{where}: `make {target}`: no such Makefile target"
        variables = dict(arg.split("=", 1) for arg in argv[1:] if "=" in arg)
        if target == "train":
            env = variables.get("ENV", "sokoban")
            return Command(
                "cli", ("train", f"--env={env}", *shlex.split(variables.get("ARGS", ""))), where
            )
        if target in SETUP_TARGETS:
            return Command("setup", (target,), where)
    return None


def documented_commands(blocks: list[Block]) -> list[Command | tuple[Block, list[str]]]:
    """Each shell command as a `Command`, or `(block, argv)` for one this test cannot run."""
    found = []
    for block in blocks:
        if block.language in SHELL:
            for argv in shell_lines(block.text):
                command = to_command(argv, block.where)
                found.append(command if command is not None else (block, argv))
    return found


def parse_cli(argv: tuple[str, ...]) -> None:
    """`gtr-turbo argv` through the CLI's own parser and, for train / sft, its config loader."""
    rest, overrides = cli._split_overrides(list(argv))
    args = cli.make_parser().parse_args(rest)
    if args.command in ("train", "sft") and not getattr(args, "resume", False):
        cli.build_config(args, overrides)


def scratch_dir(path: Path) -> Path:
    """A directory where documented relative paths (`configs/...`, `runs/...`) work."""
    path.mkdir(parents=True, exist_ok=True)
    for name in SCRATCH_LINKS:
        if not (path / name).exists():
            (path / name).symlink_to(REPO / name)
    return path


# -- fast -------------------------------------------------------------------------------------


def test_every_page_is_in_the_run_order():
    pages = {"README.md", *(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))}
    assert set(PAGES) == pages, f"add new pages to PAGES: {sorted(pages - set(PAGES))}"


def test_the_make_train_recipe_is_the_one_translated():
    text = (REPO / "Makefile").read_text()
    recipe = re.search(r"^train:.*\n\t(.+)$", text, re.M)
    assert recipe and recipe.group(1).strip() == MAKE_TRAIN_RECIPE


def test_every_command_is_understood_or_skipped():
    unknown = [
        f"{block.where}: {shlex.join(argv)}"
        for item in documented_commands(all_blocks())
        if isinstance(item, tuple)
        for block, argv in [item]
        if block.skip is None
    ]
    assert not unknown, f"commands this test cannot run; mark their block skip: {unknown}"


def test_every_cli_command_parses_and_its_config_loads(monkeypatch):
    monkeypatch.chdir(REPO)  # documented config paths are relative to the repository
    commands = [c for c in documented_commands(all_blocks()) if isinstance(c, Command)]
    cli_commands = [c for c in commands if c.kind == "cli"]
    assert len(cli_commands) >= 10  # the quickstart alone shows more: the extraction works
    for command in cli_commands:
        try:
            parse_cli(command.argv)
        except (SystemExit, Exception) as err:  # any failure is the page's
            pytest.fail(f"{command.where}: gtr-turbo {shlex.join(command.argv)}: {err!r}")


@pytest.fixture(scope="module")
def console_blocks():
    blocks = [b for b in all_blocks() if b.language == "console"]
    assert blocks, "the troubleshooting page shows console examples"
    return blocks


def test_console_examples_print_what_the_page_shows(console_blocks, tmp_path, monkeypatch):
    from gtr_turbo_jax.train import trainer

    def no_training(self):
        raise AssertionError("this documented example started a training run")

    monkeypatch.setattr(trainer.Trainer, "run", no_training)
    monkeypatch.chdir(scratch_dir(tmp_path))
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    failures = []
    for block in console_blocks:
        for argv, expected in console_examples(block):
            command = to_command(argv, block.where)
            assert command is not None and command.kind == "cli", f"{block.where}: {argv}"
            output = io.StringIO()
            with (
                contextlib.redirect_stdout(output),
                contextlib.redirect_stderr(output),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                try:
                    code = cli.main(list(command.argv))
                except SystemExit as exit_:
                    code = exit_.code
            got = output.getvalue()
            if code != 2 or not checker.check_output(expected + "\n", got, flags):
                failures.append(f"{block.where}: $ {shlex.join(argv)}\n[exit {code}]\n{got}")
    assert not failures, "\n\n".join(failures)


def test_python_blocks_compile():
    """A block that does not compile raises SyntaxError here, naming its page and line."""
    python = [block for block in all_blocks() if block.language == "python"]
    for block in python:
        compile(block.text, block.where, "exec")
    assert python, "no Python blocks found: the block parser or the docs changed"


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        base = (REPO / page).parent
        for target in LINK.findall((REPO / page).read_text()):
            if "://" in target or target.startswith("#"):
                continue
            if not (base / target.split("#")[0]).exists():
                broken.append(f"{page}: {target}")
    assert not broken, broken


@pytest.fixture(scope="module")
def reference_script():
    spec = importlib.util.spec_from_file_location(
        "make_config_reference", REPO / "docs" / "make_config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_key_has_a_meaning(reference_script):
    assert reference_script.missing_meanings() == []
    assert reference_script.stale_meanings() == []


def test_config_reference_is_up_to_date(reference_script):
    expected = reference_script.render()
    current = (REPO / "docs" / "config_reference.md").read_text()
    assert current == expected, "run: python docs/make_config_reference.py"
    # and it is the schema's: a key of each section, with its default, is in the table
    assert "| `rl.kl_beta` | `1.0` | `1.0` |" in current
    assert "| `configs/points24.py` | `format_reward.valid` | `3.0` | `3.0` |" in current


# -- slow: run everything ---------------------------------------------------------------------


def ci_argv(argv: tuple[str, ...]) -> list[str]:
    """A documented `gtr-turbo` command at CI size."""
    argv = list(argv)
    if argv[0] in ("train", "sft") and "--resume" not in argv and "--smoke" not in argv:
        argv.append("--smoke")
    if argv[0] == "eval":
        argv = ["--episodes=4" if a.startswith("--episodes=") else a for a in argv]
    return argv


def run(argv: list[str], cwd: Path, env: dict[str, str], where: str) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (
        f"{where}: {shlex.join(argv)} exited {done.returncode}\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}"
    )


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing the slow test runs: a command line, or a page's python script (`source`)."""

    argv: tuple[str, ...]  # ("gtr-turbo", ...) or ("python", ...); () for a script
    where: str
    source: str = ""


def runnable_groups(page: str) -> list[list[Block]]:
    """The page's blocks to run: each shell block alone, consecutive python blocks together."""
    groups: list[list[Block]] = []
    for block in page_blocks(page):
        if block.skip is not None or block.language not in (*SHELL, "python"):
            continue
        joins = block.language == "python" and groups and groups[-1][-1].language == "python"
        if joins:
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


def session_steps() -> list[Step]:
    """Everything the slow test runs, in order; a command shown twice runs once."""
    steps: list[Step] = []
    seen: set[tuple[str, ...]] = set()
    for page in PAGES:
        for group in runnable_groups(page):
            if group[0].language == "python":
                source = "\n\n".join(block.text for block in group) + "\n"
                steps.append(Step((), group[0].where, source))
                continue
            for item in documented_commands(group):
                assert isinstance(item, Command), item
                if item.kind == "setup":
                    continue
                if item.kind == "cli":
                    argv = ("gtr-turbo", *ci_argv(item.argv))
                else:
                    argv = ("python", *item.argv)
                if argv not in seen:
                    seen.add(argv)
                    steps.append(Step(argv, item.where))
    return steps


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path_factory):
    scratch = scratch_dir(tmp_path_factory.mktemp("docs-session"))
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "HF_HUB_OFFLINE": "1",
        # The pages train the same tiny shapes several times: compile them once.
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    steps = session_steps()
    assert sum(step.argv[:1] == ("gtr-turbo",) for step in steps) >= 8
    for index, step in enumerate(steps):
        if step.source:
            path = scratch / f"_docs_script_{index}.py"
            path.write_text(step.source)
            argv = [sys.executable, str(path)]
        elif step.argv[0] == "gtr-turbo":
            argv = [sys.executable, "-m", "gtr_turbo_jax", *step.argv[1:]]
        else:
            argv = [sys.executable, *step.argv[1:]]
        run(argv, scratch, env, step.where)
