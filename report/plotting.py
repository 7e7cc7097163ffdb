"""Curves of training runs, drawn from their `metrics.jsonl`: `bertprep plot` and the report's figure.

    bertprep plot runs/a runs/b -o curves.png [--metric val_mlm_acc ...]

`read_run(dir)` reads a run directory (a pretraining run of trainer/run.py or a `bertprep finetune`
run) and refuses anything else with one line; `draw(runs)` puts every run on shared axes, one
panel per metric, a colour per run, labelled by run name. Records that carry a `phase` field mark
where each phase starts (a dotted line and the phase's name). matplotlib is imported only when a
figure is drawn, with the Agg backend, so this works on a machine with no screen; it comes with
`pip install 'bertprep[plot]'`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

from bertprep.shards.atomic import atomic_write
from bertprep.shards.errors import ConfigError, InputError
from bertprep.shards.options import check, option
from bertprep.trainer.metrics import METRICS_FILE, read_records

# panel name -> (title, [(record key, legend text, style)], log y axis). A panel is drawn when
# some run records its first key; `--metric NAME` picks panels by name, or any recorded key.
PANELS: dict[str, tuple[str, list[tuple[str, str, str]], bool]] = {
    "loss": ("loss", [("loss", "train", "line"), ("val_loss", "validation", "dashed")], False),
    "val_mlm_acc": ("validation MLM accuracy", [("val_mlm_acc", "", "points")], False),
    "val_ppl": ("validation perplexity", [("val_ppl", "", "points")], True),
    "val_nsp_acc": ("validation NSP accuracy", [("val_nsp_acc", "", "points")], False),
    "val_acc": ("accuracy (fine-tuning)", [("val_acc", "validation", "points"), ("test_acc", "test", "star")], False),
    "val_mae": ("rating error (fine-tuning, MAE)", [("val_mae", "validation", "points"), ("test_mae", "test", "star")],
                False),
    "lr": ("learning rate", [("lr", "", "line")], False),
    "tokens_per_s": ("throughput (tokens/s)", [("tokens_per_s", "", "line")], False),
}
FORMATS = (".png", ".svg", ".pdf")


@dataclass(frozen=True)
class RunLog:
    """One run directory's records, in file order."""
    path: Path
    name: str
    kind: str              # "pretrain" or "finetune"
    records: list[dict]

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of every record holding a finite number under `key`."""
        xs, ys = [], []
        for part in self.segments(key):
            xs += part[0]
            ys += part[1]
        return xs, ys

    def segments(self, key: str) -> list[tuple[list[float], list[float]]]:
        """`series` cut where a fine-tuning run starts another `seed` (its steps start again)."""
        parts, seed = [], object()
        for r in self.records:
            v, step = r.get(key), r.get("step")
            if not (_number(v) and _number(step) and math.isfinite(v)):
                continue
            if not parts or r.get("seed") != seed:
                parts.append(([], []))
                seed = r.get("seed")
            parts[-1][0].append(step)
            parts[-1][1].append(v)
        return parts

    def keys(self) -> set[str]:
        return {k for r in self.records for k, v in r.items() if k != "step" and _number(v)}

    def phases(self) -> list[tuple[float, str]]:
        """(first step, name) of each phase, in order, when records carry `phase`."""
        starts, current = [], None
        for r in self.records:
            if "phase" in r and _number(r.get("step")) and r["phase"] != current:
                current = r["phase"]
                starts.append((r["step"], str(current)))
        return starts


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_run(path: Path | str) -> RunLog:
    """A run directory's `metrics.jsonl`; anything that is not a run is one clear error."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such run directory")
    if not path.is_dir():
        raise InputError(f"{path}: not a run directory (give the directory that holds {METRICS_FILE})")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise InputError(f"{path}: not a run directory (no {METRICS_FILE}); give a directory written by "
                         f"trainer/run.py or `bertprep finetune`")
    try:
        records = read_records(metrics)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{metrics}: cannot read ({e.__class__.__name__})") from None
    if not any(_number(r.get("step")) and len(r) > 1 and "event" not in r for r in records):
        raise InputError(f"{metrics}: no metric records yet")
    finetune = (path / "best.pt").is_file() or any("epoch" in r for r in records)
    return RunLog(path, path.name, "finetune" if finetune else "pretrain", records)


def label_runs(runs: list[RunLog]) -> list[str]:
    """Directory names, lengthened with their parents until they tell the runs apart."""
    parts = [r.path.resolve().parts for r in runs]
    for n in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(set(parts)):
            return labels
    return labels


def panels_for(runs: list[RunLog], metrics: tuple[str, ...] = ()) -> list[str]:
    """The panels to draw: those named (each must be recorded by some run), else every default
    panel that some run records."""
    recorded = set().union(*(r.keys() for r in runs))
    if not metrics:
        return [name for name, (_, series, _) in PANELS.items() if series[0][0] in recorded]
    for m in metrics:
        if m not in recorded and not (m in PANELS and recorded & {k for k, _, _ in PANELS[m][1]}):
            raise ConfigError(f"--metric {m}: no run records it; recorded: {', '.join(sorted(recorded))}")
    return list(dict.fromkeys(metrics))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'bertprep[plot]' (or matplotlib)") from None
    matplotlib.use("Agg", force=True)  # no screen needed; never opens a window
    import matplotlib.pyplot as plt
    return plt


def _style(style: str, few: bool) -> dict:
    """Line style of a series; markers only where points are few enough to see."""
    return {"line": dict(linestyle="-", marker="." if few else None, linewidth=1.4),
            "dashed": dict(linestyle="--", marker="o" if few else None, markersize=3, linewidth=1.4),
            "points": dict(linestyle="-", marker="o" if few else None, markersize=3, linewidth=1.4),
            "star": dict(linestyle="none", marker="*", markersize=11)}[style]


def draw(runs: list[RunLog], metrics: tuple[str, ...] = ()):
    """A matplotlib Figure: one panel per metric, every run on the same axes, phases marked."""
    plt = _pyplot()
    names = panels_for(runs, metrics)
    cols = 1 if len(names) == 1 else 2
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.0 * rows + 0.7), squeeze=False,
                             layout="constrained")
    colours = plt.get_cmap("tab10").colors
    labels = label_runs(runs)
    for n, (ax, name) in enumerate(zip(axes.flat, names)):
        title, series, log = PANELS.get(name, (name, [(name, "", "line")], False))
        drawn = {}
        for i, run in enumerate(runs):
            colour = colours[i % len(colours)]
            for key, text, style in series:
                for xs, ys in run.segments(key):  # one line per seed of a multi-seed fine-tuning
                    ax.plot(xs, ys, color=colour, **_style(style, len(xs) <= 30))
                    drawn[key] = (text, style)
            for step, phase in run.phases():
                ax.axvline(step, color=colour, linestyle=":", linewidth=1)
                if n < cols:  # name the phases once per column, in the top row
                    ax.annotate(phase, (step, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                                textcoords="offset points", va="top", fontsize=7, color=colour)
        if log and all(min(run.series(k)[1] or [1]) > 0 for run in runs for k, _, _ in series):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(drawn) > 1:  # which line style is which series, in grey (colours are runs)
            ax.legend([plt.Line2D([], [], color="0.4", **_style(style, True)) for _, style in drawn.values()],
                      [text for text, _ in drawn.values()], fontsize=7, loc="best")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colours[i % len(colours)], linewidth=2.5) for i in range(len(runs))]
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(runs), 4), fontsize=9, frameon=False)
    return fig


def figure_bytes(fig, fmt: str = "png", dpi: int = 100) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


@dataclass(frozen=True, kw_only=True)
class PlotConfig:
    runs: tuple[str, ...]               # RUN_DIR...
    out: str = option("curves.png", short="-o", help="Image to write: .png, .svg or .pdf.")
    metrics: tuple[str, ...] = option((), flag="--metric", help=(
        "A panel to draw (repeatable): loss, val_mlm_acc, val_ppl, val_nsp_acc, val_acc, val_mae, lr, tokens_per_s "
        "or any key of metrics.jsonl [default: every recorded one of these]."))
    dpi: int = option(100, at_least=20, at_most=600, help="Resolution of a .png, in dots per inch.")

    def __post_init__(self):
        check(self)
        if not self.runs:
            raise ConfigError("give at least one run directory")
        if Path(self.out).suffix.lower() not in FORMATS:
            raise ConfigError(f"-o {self.out}: the file name must end in {', '.join(FORMATS)}")


def plot_runs(cfg: PlotConfig) -> dict:
    """Draw the runs' curves into `cfg.out` (atomically); returns out, runs and panels."""
    out = Path(cfg.out)
    if not out.parent.is_dir():
        raise InputError(f"-o {out}: no such directory {out.parent}")
    runs = [read_run(p) for p in cfg.runs]
    panels = panels_for(runs, cfg.metrics)
    data = figure_bytes(draw(runs, cfg.metrics), out.suffix.lower()[1:], cfg.dpi)
    with atomic_write(out) as f:
        f.write(data)
    return {"out": str(out), "runs": label_runs(runs), "panels": panels}
