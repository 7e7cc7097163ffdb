"""Every command shown in README.md and docs/*.md runs, in order, and every flag they name exists.

The convention the docs follow (and this test reads):

- A fenced block marked ```console holds shell commands: a line starting with `$ ` is a command,
  continued on the next line while it ends with `\\`, and a command holding a here-document
  (`<<EOF`, `<<'EOF'`) takes the lines up to the terminator. Every other line is shown output,
  pasted from a real run (trimmed with `...`). A command whose shown output has a line starting
  with `error: ` must exit with status 2; every other command must exit 0.
- A fenced block marked ```python is run as a script (`python -`) at that point of the page.
- `<!-- skip: REASON -->` on the line before a block (blank lines between allowed) marks a block
  that is shown but not run here (it needs a GPU, several machines, the network, or is too long
  for CI); the test reports it as skipped with REASON. Its flags are still checked.
- Blocks with any other marker (```toml, ```text, plain ```) are not run.

Each page runs in its own fresh temporary directory that looks like the checkout's root (links
to what git tracks: `data/`, `tests/data/`, `trainer/run.py`, ...), so the docs say "run from the
checkout's root" and outputs (`tokens/`, `shards/`, `runs/`) land in the temporary directory,
never in the checkout. `bertprep` and `python` are the venv's (the
directory of the interpreter running the tests is first on PATH).

`test_flags_exist` checks that every `--flag` in a shown command appears in that command's
`--help`, and every `--flag` named in a page's prose appears in the `--help` of one of bertprep's
commands or the trainer's, so docs cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
WRITTEN_INTO = ("shards",)  # tracked folders the docs' commands write into
# Flags of other programs that the docs' prose names on their own (google-research/bert's, python -m venv's).
FOREIGN = {"--init_checkpoint", "--system-site-packages"}


@dataclass
class Command:
    text: str                 # the shell command, continuation lines and here-document included
    output: list[str]         # the output shown under it


@dataclass
class Block:
    page: Path
    line: int                 # 1-based line of the opening fence
    lang: str                 # console or python
    skip: str | None          # the reason from <!-- skip: ... -->, or None
    commands: list[Command] = field(default_factory=list)
    source: str = ""          # python: the script

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_page(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, i, skip = [], 0, None
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*<!--\s*skip:\s*(.*?)\s*-->\s*$", line)
        if m:
            skip = m.group(1)
            i += 1
            continue
        fence = re.match(r"```(\w*)", line)
        if not fence:
            if line.strip():
                skip = None
            i += 1
            continue
        lang, start = fence.group(1), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if lang == "console":
            blocks.append(Block(page, start + 1, lang, skip, parse_console(body)))
        elif lang == "python":
            blocks.append(Block(page, start + 1, lang, skip, source="\n".join(body) + "\n"))
        skip = None
    return blocks


def parse_console(body: list[str]) -> list[Command]:
    commands, i = [], 0
    while i < len(body):
        if not body[i].startswith("$ "):
            if commands:
                commands[-1].output.append(body[i])
            i += 1
            continue
        text = body[i][2:]
        while text.endswith("\\") and i + 1 < len(body):
            i += 1
            text += "\n" + body[i]
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)", text)
        if heredoc:
            end = heredoc.group(1)
            while i + 1 < len(body):
                i += 1
                text += "\n" + body[i]
                if body[i].strip() == end:
                    break
        commands.append(Command(text, []))
        i += 1
    return commands


ALL_BLOCKS = [b for page in PAGES for b in parse_page(page)]


def checkout_farm(where: Path) -> None:
    """Make `where` look like the checkout's root: every top-level entry git tracks is linked in,
    except that shards/ (the package folder, where `bertprep shard` writes by default) is a real
    folder of links to its entries, so that the shards written there stay out of the checkout."""
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        names = {p.split("/")[0] for p in tracked.splitlines()}
    except (OSError, subprocess.CalledProcessError):
        names = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    for name in sorted(names):
        source = ROOT / name
        if name in WRITTEN_INTO:
            (where / name).mkdir()
            for entry in source.iterdir():
                if entry.name != "__pycache__":
                    (where / name / entry.name).symlink_to(entry)
        elif source.exists():
            (where / name).symlink_to(source)


class PageRun:
    """A page's blocks run in order in one temporary directory; a block runs the ones before it first."""

    def __init__(self, page: Path):
        self.tmp = tempfile.TemporaryDirectory(prefix="bertprep-docs-")
        self.cwd = Path(self.tmp.name)
        checkout_farm(self.cwd)
        self.blocks = [b for b in ALL_BLOCKS if b.page == page]
        self.done = 0
        self.failed: str | None = None  # the block that failed: the page's later blocks cannot run
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
                    "VIRTUAL_ENV": str(BIN.parent)}
        self.env.pop("PYTHONPATH", None)

    def run_through(self, block: Block) -> None:
        index = self.blocks.index(block)
        while self.done <= index:
            if self.failed:
                pytest.fail(f"not run: the page's block {self.failed} failed", pytrace=False)
            b = self.blocks[self.done]
            self.done += 1
            if b.skip is None:
                self.failed = b.id
                self.run_block(b)
                self.failed = None

    def run_block(self, b: Block) -> None:
        if b.lang == "python":
            self.check(b, "python -", subprocess.run([str(BIN / "python"), "-"], input=b.source, cwd=self.cwd,
                                                       env=self.env, capture_output=True, text=True, timeout=300), 0)
            return
        for c in b.commands:
            expected = 2 if any(line.startswith("error: ") for line in c.output) else 0
            done = subprocess.run(["bash", "-o", "pipefail", "-c", c.text], cwd=self.cwd, env=self.env,
                                  capture_output=True, text=True, timeout=300)
            self.check(b, c.text, done, expected)

    @staticmethod
    def check(b: Block, text: str, done: subprocess.CompletedProcess, expected: int) -> None:
        if done.returncode != expected:
            pytest.fail(f"{b.id}: `{text}` exited {done.returncode}, the docs show {expected}:\n"
                        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}", pytrace=False)


_RUNS: dict[Path, PageRun] = {}


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    for run in _RUNS.values():
        run.tmp.cleanup()
    _RUNS.clear()


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_shown_commands_run(block: Block):
    if block.page not in _RUNS:
        _RUNS[block.page] = PageRun(block.page)
    if block.skip is not None:
        pytest.skip(block.skip)
    _RUNS[block.page].run_through(block)


# --- flags ----------------------------------------------------------------------------------------

def _help(argv: list[str]) -> str:
    done = subprocess.run([str(BIN / "python"), *argv, "--help"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert done.returncode == 0, f"{argv} --help failed: {done.stderr}"
    return done.stdout


def _bertprep_help(args: list[str]) -> str:
    """`bertprep ARGS --help` through the console entry point, in this process."""
    from bertprep.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*args, "--help"])
        except SystemExit as e:
            assert not e.code, f"bertprep {args} --help exited {e.code}"
    return out.getvalue()


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """`--help` of every bertprep command, of the trainer, the demo and the GPU check, as a user gets it."""
    top = _bertprep_help([])
    names = re.findall(r"^  (\w[\w-]*)  ", top.split("Commands:", 1)[1], flags=re.M)
    assert names, top
    out = {f"bertprep {name}": _bertprep_help([name]) for name in names}
    out["trainer/run.py"] = _help(["trainer/run.py"])
    out["bertprep.demo"] = _help(["-m", "bertprep.demo"])
    out["bench.gpu"] = _help(["-m", "bench.gpu"])
    return out


def program(words: list[str]) -> tuple[str | None, list[str]]:
    """The --help key of a simple command and its arguments; None for another program (make, pip,
    dask, huggingface-cli: their flags are not ours to check)."""
    words = [w for w in words if not re.match(r"\w+=", w)]  # leading VAR=value
    if not words:
        return None, []
    if Path(words[0]).name == "bertprep" and len(words) > 1:
        return f"bertprep {words[1]}", words[2:]
    if Path(words[0]).name in ("python", "python3", "torchrun"):
        if "trainer/run.py" in words:
            return "trainer/run.py", words[words.index("trainer/run.py") + 1:]
        if len(words) > 2 and words[1] == "-m" and words[2].split(".")[0] in ("bertprep", "bench"):
            if words[2] == "bertprep.cli" and len(words) > 3:
                return f"bertprep {words[3]}", words[4:]
            return words[2], words[3:]
    return None, []


def simple_commands(text: str) -> list[list[str]]:
    text = re.split(r"<<", text)[0].replace("\\\n", " ")
    out = []
    for part in re.split(r"&&|\|\||[|;&\n]", text):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            continue
        if words:
            out.append(words)
    return out


def flags_of(words) -> set[str]:
    return {w.split("=")[0] for w in words if re.match(r"--[a-z][a-z0-9-]*(=|$)", w)}


def test_flags_exist(helps):
    problems = []
    every_help = "\n".join(helps.values())

    def check(flag: str, key: str | None, where: str) -> None:
        text = helps.get(key, every_help) if key else every_help
        if key and key not in helps:
            if key.startswith("bench."):
                helps[key] = text = _help(["-m", key])
            else:
                problems.append(f"{where}: no such command {key}")
                return
        if not re.search(re.escape(flag) + r"(?![\w-])", text):
            problems.append(f"{where}: {flag} is not in {'`' + key + ' --help`' if key else 'any command --help'}")

    for page in PAGES:
        for b in (b for b in ALL_BLOCKS if b.page == page and b.lang == "console"):
            for c in b.commands:
                for words in simple_commands(c.text):
                    key, args = program(words)
                    for flag in flags_of(args) if key else ():
                        check(flag, key, b.id)
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            words = span.split()
            key, args = program(words)
            if key is None and not words[0].startswith("--"):
                continue  # another program's command line
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", " ".join(args) if key else span):
                if flag not in FOREIGN:
                    check(flag, key, f"{page.relative_to(ROOT)}: `{span}`")
    assert not problems, "\n".join(problems)


def test_every_console_block_shows_a_command():
    for b in ALL_BLOCKS:
        assert b.lang != "console" or b.commands, f"{b.id}: a console block without `$ ` commands"
