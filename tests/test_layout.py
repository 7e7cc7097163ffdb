"""The package layout's contracts: no module shadows a stdlib or dependency module (torchrun puts
trainer/ first on sys.path), imports flow preprocess -> shards <- trainer <- finetune <- report (nothing imports cli.py), and the CLI, preprocess
and shards never import torch, so `bertprep --help` starts instantly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("preprocess", "shards", "trainer", "finetune", "report")
DEPENDENCIES = {"torch", "tokenizers", "msgpack", "pyarrow", "zstandard", "click", "numpy", "pytest", "tqdm",
                "hypothesis", "transformers", "safetensors", "tensorboard", "datasets", "dask", "distributed", "ray",
                "matplotlib"}
# Which of our packages each package may import.
ALLOWED = {"shards": {"shards"}, "preprocess": {"preprocess", "shards"}, "trainer": {"trainer", "shards"},
           "finetune": {"finetune", "trainer", "shards"}, "report": {"report", "finetune", "trainer", "shards"}}
TORCH_FREE = ("preprocess", "shards")


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            yield pkg, path


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_takes_a_stdlib_or_dependency_name():
    taken = set(sys.stdlib_module_names) | DEPENDENCIES
    bad = [f"{pkg}/{p.name}" for pkg, p in modules() if p.stem in taken]
    assert not bad, f"these shadow stdlib or dependency modules when trainer/ is on sys.path: {bad}"


def test_no_code_module_looks_like_a_shard_file():
    bad = [p.name for _, p in modules() if p.name.startswith(("train_", "val_", "test_"))]
    assert not bad


def test_imports_flow_one_way():
    for pkg, path in modules():
        for name in imported_names(path):
            parts = name.split(".")
            if parts[0] == "bertprep" and len(parts) > 1 and parts[1] in PACKAGES:
                assert parts[1] in ALLOWED[pkg], f"{pkg}/{path.name} imports {name}"


def test_nothing_imports_the_cli():
    users = [f"{pkg}/{p.name}" for pkg, p in modules() if any(n in ("bertprep.cli", "cli") for n in imported_names(p))]
    assert not users, f"cli.py is the outermost shell; these import it: {users}"


def test_cli_preprocess_and_shards_never_import_torch():
    for pkg, path in modules():
        if pkg in TORCH_FREE:
            assert not any(n.split(".")[0] == "torch" for n in imported_names(path)), path
    code = "import sys, bertprep.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_commands_help_starts_without_torch():
    """`bertprep CMD --help` derives its options from the command's config class; those classes live
    apart from the code that runs them, so no help waits seconds for torch."""
    code = ("import sys\nfrom bertprep.cli import cli, ConfigCommand\n"
            "for name, cmd in cli.commands.items():\n"
            "    if isinstance(cmd, ConfigCommand):\n"
            "        cmd.params\n"
            "        if 'torch' in sys.modules:\n"
            "            sys.exit(f'bertprep {name} --help imports torch')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
