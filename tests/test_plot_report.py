"""Seeing a run: `bertprep plot` draws the curves of real runs into a non-blank image, one colour per
run, phases marked; `bertprep report` writes one self-contained HTML page (images embedded, nothing
fetched) with a coloured span for every masked token of the shown sentences, or a fine-tuning run's
confusion matrix and worst errors; headless Chromium renders it without console errors, and shows
the top 3 on hover; a directory that is not a run is one line and exit 2."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bertprep.shards.reader import open_shards
from bertprep.trainer.config import train_config
from bertprep.trainer.loop import train
from conftest import DATA, run_cli

pytest.importorskip("matplotlib", reason="plots need the plot extra: pip install -e '.[plot]' (make install does)")
Image = pytest.importorskip("PIL.Image", reason="Pillow (a matplotlib dependency) reads the images back")


def pretrain(shards, out, lr):
    train(train_config(shards=tuple(map(str, shards)), model="tiny", layers=2, hidden=64, heads=2, ffn=256,
                      max_steps=30, batch_size=16, lr=lr, warmup_steps=5, dropout=0.0, val_interval=10,
                      val_batches=2, val_examples=0, log_interval=5, ckpt_interval=30, out=str(out),
                      tensorboard=False, quiet=True))
    return out


@pytest.fixture(scope="module")
def runs(token_store, tmp_path_factory):
    """Two short real pretraining runs (NSP shards) that differ in learning rate, and their val shards."""
    root = tmp_path_factory.mktemp("runs")
    assert run_cli(["shard", "--tokens", token_store, "--out", root / "shards", "--max-len", "64", "--nsp",
                    "--seed", "1", "--split", "0.8,0.1,0.1"]) == 0
    shards = sorted((root / "shards").glob("train_*"))
    return pretrain(shards, root / "slow", 1e-3), pretrain(shards, root / "fast", 3e-3), \
        sorted((root / "shards").glob("val_*"))


@pytest.fixture(scope="module")
def finetuned(runs, tmp_path_factory):
    """A short fine-tuning run on Shakespeare (0) against Python docs (1) sentences."""
    d = tmp_path_factory.mktemp("ft")
    shakespeare = [s.strip() for s in (DATA / "shakespeare.txt").read_text().splitlines() if 30 < len(s.strip()) < 160]
    docs = [s.strip() for s in (DATA / "pydocs.wiki.tokens").read_text().splitlines()
            if 30 < len(s.strip()) < 160 and not s.startswith(" =")]
    rng = random.Random(0)
    rows = [(s, 0) for s in rng.sample(shakespeare, 50)] + [(s, 1) for s in rng.sample(docs, 50)]
    rng.shuffle(rows)
    for name, part in (("train", rows[:70]), ("val", rows[70:])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"sentence": s, "label": y}) + "\n" for s, y in part))
    assert run_cli(["finetune", "--checkpoint", runs[0], "--train", d / "train.jsonl", "--val", d / "val.jsonl",
                    "--out", d / "run", "--epochs", "2", "--lr", "3e-4", "--batch-size", "16", "--max-len", "64"]) == 0
    return d / "run"


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def near(img: np.ndarray, rgb, tol: int = 30) -> int:
    return int((np.abs(img - np.array(rgb)).max(-1) <= tol).sum())


def test_plot_draws_two_real_runs_into_a_non_blank_png(runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert run_cli(["plot", runs[0], runs[1], "-o", out]) == 0
    assert "loss, val_mlm_acc, val_ppl, val_nsp_acc, lr, tokens_per_s of 2 run(s)" in capsys.readouterr().out
    img = pixels(out)
    height, width, _ = img.shape
    assert width >= 1000 and height >= 700 and out.stat().st_size > 30_000
    assert (img.min(-1) < 235).mean() > 0.03              # more than a white page and a few frames
    assert near(img, (31, 119, 180)) > 500 and near(img, (255, 127, 14)) > 500  # both runs drawn (tab10 colours)


def test_plot_metric_picks_panels_and_phases_are_marked(runs, tmp_path):
    from bertprep.report.plotting import PlotConfig, draw, plot_runs, read_run

    # as trainer/run.py --init-from writes a second phase: the first phase's records untagged, an
    # event where the new phase begins, then records tagged with its name
    phased = tmp_path / "phased"
    phased.mkdir()
    records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    with open(phased / "metrics.jsonl", "w") as f:
        for r in records:
            if r["step"] == 15 and "loss" in r:
                f.write(json.dumps({"event": "phase", "step": 15, "phase": "phase2-512"}) + "\n")
            f.write(json.dumps(r | ({"phase": "phase2-512"} if r["step"] > 15 and "event" not in r else {})) + "\n")
    r = plot_runs(PlotConfig(runs=(str(phased), str(runs[1])), out=str(tmp_path / "acc.png"), metrics=("val_mlm_acc",)))
    assert r["panels"] == ["val_mlm_acc"] and r["runs"] == ["phased", "fast"]
    assert pixels(tmp_path / "acc.png").shape[0] < 500      # one panel, not six
    run = read_run(phased)
    assert run.phases() == [(15, "phase2-512")]
    fig = draw([run], ("loss",))
    vertical = [line.get_xdata()[0] for line in fig.axes[0].lines if len(set(line.get_xdata())) == 1]
    assert vertical == [15] and [t.get_text() for t in fig.axes[0].texts] == ["phase2-512"]


class Page(HTMLParser):
    """What the tests look at in the report: images, references, coloured tokens, tables."""

    def __init__(self):
        super().__init__()
        self.images, self.refs, self.tokens, self.cells, self.stack = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "img":
            self.images.append(a["src"])
        classes = (a.get("class") or "").split()
        if tag == "span" and "tok" in classes:
            self.tokens.append({"ok": "ok" in classes, "truth": False, "top3": ""})
        self.stack.append((tag, classes))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        inside = [c for _, cs in self.stack for c in cs]
        if "tok" in inside and "legend" not in inside and self.tokens:
            if "truth" in inside:
                self.tokens[-1]["truth"] = True
            if "top3" in inside:
                self.tokens[-1]["top3"] += data
        if "cm" in inside and self.stack[-1][0] == "td" and data.strip().isdigit():
            self.cells.append(int(data))


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_report_embeds_its_images_and_colours_every_masked_token(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert run_cli(["report", runs[1], "-o", out, "-n", "5"]) == 0
    page = parse(out)
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size[0] > 500
    assert all(ref.startswith("data:") for ref in page.refs)  # nothing fetched: no file, no network
    shown = open_shards(runs[2])[0].slice(0, 5)
    expected = int(shown["num_masked"].sum())
    tokens = [t for t in page.tokens if t["top3"]]  # the legend's two samples carry no top 3
    assert len(tokens) == expected and f"{expected} masked tokens coloured" in capsys.readouterr().out
    assert all(t["truth"] != t["ok"] for t in tokens)     # wrong guesses carry the true token beside
    assert all(t["top3"].count("·") == 2 for t in tokens)  # three guesses with probabilities
    html = out.read_text()
    assert "untrained (step 0)" in html and "trained (step 30)" in html and "NSP accuracy" in html


def test_report_of_a_finetuning_run_has_the_confusion_matrix_and_worst_errors(finetuned, tmp_path):
    out = tmp_path / "ft.html"
    assert run_cli(["report", finetuned, "-o", out, "-n", "3"]) == 0
    stored = parse(out)
    assert sum(stored.cells[:2]) + sum(stored.cells[3:5]) == 30  # 2x2 cells (row totals between) = val rows
    assert "Worst errors" in out.read_text() and "sentences of predictions.jsonl" in out.read_text()
    # --val FILE: the same matrix, predicted from best.pt on that file
    assert run_cli(["report", finetuned, "-o", tmp_path / "again.html", "-n", "3",
                    "--val", finetuned.parent / "val.jsonl"]) == 0
    assert parse(tmp_path / "again.html").cells == stored.cells


def test_a_directory_that_is_not_a_run_is_one_line_and_exit_2(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "file.txt").write_text("x")
    cases = [(["plot", runs[2][0].parent], "not a run directory (no metrics.jsonl)"),
             (["report", runs[2][0].parent], "not a run directory (no metrics.jsonl)"),
             (["plot", tmp_path / "nowhere"], "no such run directory"),
             (["report", tmp_path / "file.txt"], "not a run directory"),
             (["plot", tmp_path / "empty"], "no metric records yet"),
             (["plot", runs[0], "--metric", "bleu"], "--metric bleu: no run records it"),
             (["plot", runs[0], "-o", tmp_path / "x.jpg"], "must end in .png"),
             (["report", runs[0], "-o", tmp_path / "nowhere" / "r.html"], "no such directory")]
    for args, needle in cases:
        capsys.readouterr()
        code = run_cli(args)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, (args, err)


def test_the_cli_imports_neither_matplotlib_nor_torch_at_start_up():
    code = "import sys, bertprep.cli; sys.exit(1 if {'matplotlib', 'torch'} & set(sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- the report in a real browser ----------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4, NUL-separated
    JSON): no websocket client, no port."""

    def __init__(self, exe: str, timeout: float = 30.0):
        self.deadline = time.monotonic() + timeout
        child_in, self.w = os.pipe()
        self.r, child_out = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="bertprep-chromium-")

        def to_fds_3_and_4():  # in the child, before exec
            import fcntl
            a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (child_in, child_out))
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=to_fds_3_and_4, pass_fds=(3, 4))
        os.close(child_in)
        os.close(child_out)
        self.buf, self.next_id, self.events = b"", 0, []

    def _read(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_for(self, method: str, since: int = 0) -> int:
        """Index of the first `method` event at or after `since`, reading until it comes."""
        i = since
        while True:
            while i >= len(self.events):
                self.events.append(self._read())
            if self.events[i].get("method") == method:
                return i
            i += 1

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)
        shutil.rmtree(self.profile, ignore_errors=True)


def test_the_report_renders_in_headless_chromium(runs, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (`make test` installs Debian's package where apt-get and root are)")
    out = tmp_path / "report.html"
    assert run_cli(["report", runs[0], "-o", out, "-n", "4"]) == 0
    browser = Chromium(exe)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        s = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", s)
        browser.send("Emulation.setDeviceMetricsOverride", s, width=1200, height=1600, deviceScaleFactor=1,
                     mobile=False)
        browser.send("Page.navigate", s, url=out.as_uri())
        # the load that counts comes after the frame has navigated to the report (not about:blank's)
        i = browser.wait_for("Page.frameNavigated")
        while browser.events[i]["params"]["frame"]["url"] != out.as_uri():
            i = browser.wait_for("Page.frameNavigated", i + 1)
        browser.wait_for("Page.loadEventFired", since=i)

        def js(expression):
            return browser.send("Runtime.evaluate", s, expression=expression, returnByValue=True)["result"]["value"]

        assert js("Array.from(document.images).map(i => i.complete && i.naturalWidth > 500)") == [True]
        # hovering a guess shows its top 3
        x, y = js("(() => { const t = document.querySelector('ol .tok'); t.scrollIntoView({block: 'center'});"
                  " const r = t.getBoundingClientRect(); return [r.left + 3, r.top + r.height / 2]; })()")
        assert js("getComputedStyle(document.querySelector('ol .tok .top3')).display") == "none"
        browser.send("Input.dispatchMouseEvent", s, type="mouseMoved", x=x, y=y)
        assert js("getComputedStyle(document.querySelector('ol .tok .top3')).display") == "block"
        js("window.scrollTo(0, 0)")
        shot = base64.b64decode(browser.send("Page.captureScreenshot", s, format="png")["data"])
        events = list(browser.events)
    finally:
        browser.close()
    (tmp_path / "screenshot.png").write_bytes(shot)
    img = pixels(tmp_path / "screenshot.png")
    assert img.shape[:2] == (1600, 1200) and img.std() > 20 and (img.min(-1) < 200).mean() > 0.02
    problems = [e["params"] for e in events
                if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled"
                    and e["params"]["type"] in ("error", "warning", "assert"))
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning"))]
    assert not problems, problems
    fetched = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert all(u.startswith(("file:", "data:")) for u in fetched) and out.as_uri() in fetched, fetched
