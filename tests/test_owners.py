"""One owner per artifact and per concern, checked on the source (an AST walk of the library): a
checkpoint is read and turned into a model only in trainer/checkpoint.py, the device is chosen only
in trainer/dist.py, metrics.jsonl is parsed only in trainer/metrics.py, top-k guesses are computed
only where their owners compute them, and no batch carries a `lengths` key (the shards' column is
`length`, and fine-tuning batches use it too). A second copy of any of these is a place for a check
to be missing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("preprocess", "shards", "trainer", "finetune", "report")


def library_files():
    for pkg in LIBRARY:
        yield from sorted((ROOT / pkg).glob("*.py"))
    yield ROOT / "cli.py"
    yield ROOT / "demo.py"


def where(predicate) -> set[str]:
    """The library files (as 'pkg/name.py') holding a node for which `predicate(node)` is true."""
    found = set()
    for path in library_files():
        if any(predicate(node) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))):
            found.add(str(path.relative_to(ROOT)))
    return found


def calls(name: str):
    """A predicate: a call of `name` or `anything.name`."""
    def predicate(node) -> bool:
        if not isinstance(node, ast.Call):
            return False
        f = node.func
        return (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name)
    return predicate


def test_a_checkpoint_is_read_and_rebuilt_in_one_place():
    torch_load = lambda n: (calls("load")(n) and isinstance(n.func, ast.Attribute)  # noqa: E731
                            and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch")
    assert where(torch_load) == {"trainer/checkpoint.py"}
    from_a_dict = lambda n: calls("ModelConfig")(n) and any(  # noqa: E731
        k.arg is None and isinstance(k.value, ast.Subscript) for k in n.keywords)
    assert where(from_a_dict) == {"trainer/checkpoint.py"}  # ModelConfig(**ckpt["model_config"])


def test_the_device_is_chosen_in_one_place():
    assert where(lambda n: isinstance(n, ast.Attribute) and n.attr == "is_available"
                 and isinstance(n.value, ast.Attribute) and n.value.attr == "cuda") == {"trainer/dist.py"}


def test_metrics_jsonl_is_parsed_in_one_place():
    def jsonl_loop(node) -> bool:  # for line in ....splitlines(): ... json.loads(line)
        return (isinstance(node, ast.For) and any(calls("splitlines")(n) for n in ast.walk(node.iter))
                and any(calls("loads")(n) for n in ast.walk(node)))
    mentions = where(lambda n: (isinstance(n, ast.Name) and n.id == "METRICS_FILE")
                     or (isinstance(n, ast.Constant) and n.value == "metrics.jsonl"))
    assert where(jsonl_loop) & mentions == {"trainer/metrics.py"}


def test_top_k_guesses_have_one_owner():
    assert where(calls("topk")) == {"trainer/evaluation.py"}


def test_one_batch_vocabulary():
    assert not where(lambda n: isinstance(n, ast.Constant) and n.value == "lengths")
