"""The run's logs: a readable line per log step, `metrics.jsonl`, and TensorBoard events if available.

`metrics.jsonl` is an interface people plot from: one JSON object per line, appended as the run
goes. Training records carry `step`, `loss`, `mlm_loss`, `lr`, `tokens_per_s` (real tokens, not
padding), `samples_per_s`,
`data_wait_s`, `data_wait_frac`, `elapsed_s` (and with `--mix`, `loss_<source>` and
`mlm_loss_<source>` over the window's steps of each source); validation records carry `step`, `val_loss`,
`val_mlm_acc`, `val_ppl` (and `val_nsp_acc` when the shards have NSP; `val_loss_<source>` and
`val_mlm_acc_<source>` when every --mix source has val_ files); `event` records mark
`resume`, `stop` and `end`. On resume, records past the checkpoint's step are dropped, so the file
always reads as one run. A later phase (`--init-from`) starts its file with the earlier phases'
records and tags its own with `phase`; an `{"event": "phase"}` record marks where it began. Only
rank 0 writes. `read_records` is the one reader (the trainer's resume and phases, `plot`, `report`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from bertprep.shards.atomic import atomic_write

METRICS_FILE = "metrics.jsonl"


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the file parseable by every reader
    return value


class MetricsLog:
    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, quiet: bool = False,
                 purge_step: int | None = None):
        self.run_dir, self.enabled, self.quiet = Path(run_dir), enabled, quiet
        self.path = self.run_dir / METRICS_FILE
        self._tb = None
        self._open_tb = None  # the writer is made at the first record: a run refused before it leaves no tb/
        self.tb_note = ""
        self.tag: dict = {}  # merged into every training and validation record (a later phase's `phase`)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard` package
                self._open_tb = lambda: SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge_step)
            except ImportError:
                self.tb_note = "TensorBoard events skipped: `pip install tensorboard` to get them"

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint a resumed run starts from)."""
        if not self.enabled or not self.path.exists():
            return
        write_records(self.path, records_until(read_records(self.path), step))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        rec = {k: _clean(v) for k, v in (record if "event" in record else record | self.tag).items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self._open_tb is not None:
            self._tb, self._open_tb = self._open_tb(), None
        if self._tb is not None:
            step = rec.get("step", 0)
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k if k.startswith("val_") else f"train/{k}", v, step)

    def say(self, text: str) -> None:
        if self.enabled and not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl in file order; a line torn by a kill is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def records_until(records: list[dict], step: int) -> list[dict]:
    """The records up to `step`: what a run resumed (or a phase begun) from that step's checkpoint keeps."""
    return [r for r in records if not isinstance(r.get("step"), (int, float)) or r["step"] <= step]


def write_records(path: Path, records: list[dict]) -> None:
    """Replace a metrics.jsonl atomically."""
    with atomic_write(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def train_line(rec: dict) -> str:
    return (f"step {rec['step']:>7} | loss {rec['loss']:.4f} | lr {rec['lr']:.3e} | "
            f"{rec['tokens_per_s']:,.0f} tok/s | {rec['samples_per_s']:,.1f} samples/s | "
            f"data wait {rec['data_wait_s'] * 1000:.1f} ms ({rec['data_wait_frac']:.1%})")


def val_line(rec: dict) -> str:
    text = (f"val  {rec['step']:>7} | loss {rec['val_loss']:.4f} | mlm acc {rec['val_mlm_acc']:.3f} | "
            f"ppl {rec['val_ppl']:.2f}")
    if "val_nsp_acc" in rec:
        text += f" | nsp acc {rec['val_nsp_acc']:.3f}"
    return text
