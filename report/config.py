"""`bertprep report`'s flags: `ReportConfig`, apart from `report/report.py` (which writes the page)
and torch-free, so `bertprep report --help` answers without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from bertprep.shards.errors import ConfigError
from bertprep.shards.options import check, option


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    run: str                             # RUN_DIR
    out: str = option("report.html", short="-o", help="HTML file to write.")
    examples: int = option(8, flag="-n", at_least=0, at_most=1000,
                           help="Validation sentences to show (fine-tuning: worst errors).")
    val: tuple[str, ...] = option((), help=(
        "Validation data instead of the run's own: val shard files for a pretraining run, a labelled file for a "
        "fine-tuning run (repeatable)."))
    val_batches: int = option(20, at_least=1, at_most=10_000, help="Batches for the final figures.")
    batch_size: int = option(32, at_least=1, at_most=4096, help="Examples per batch for the final figures.")

    def __post_init__(self):
        check(self)  # the final figures: up to 10,000 batches of up to 4096 examples
        if not self.out.lower().endswith((".html", ".htm")):
            raise ConfigError(f"-o {self.out}: the report is HTML; name it .html")
