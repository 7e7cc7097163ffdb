"""The HTML of `bertprep report`: one page, its style inline, no script, every text escaped.

Each function returns a fragment for one section; `document` wraps them. Masked positions are
`<span class="tok ok">` (top-1 guess right, green) or `<span class="tok bad">` (wrong, orange, with
the true token beside in `.truth`); each holds its top-3 guesses in `.top3`, shown on hover, or
beside every guess when the page's "top-3" switch (a checkbox, styled in CSS) is on.
"""

from __future__ import annotations

import datetime
import json
from html import escape

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1d2430;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:22px;margin:4px 0 0}
h2{font-size:16px;margin:0 0 10px}
.sub{color:#5b6472;margin:2px 0 12px;font-size:12px}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:14px 18px;margin:14px 0}
.note{background:#fff8e6;border:1px solid #f0d48a;border-radius:6px;padding:8px 12px;margin:10px 0}
img.curves{width:100%;height:auto;display:block}
.groups{display:flex;flex-wrap:wrap;gap:14px}
.groups>div{flex:1 1 300px;min-width:0}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#5b6472;font-weight:600}
table.kv td:first-child{color:#5b6472;white-space:nowrap}
table.kv td{border-bottom:1px solid #f0f2f5;word-break:break-word}
table.num td,table.num th{text-align:right;padding:4px 14px}
table.num td:first-child,table.num th:first-child{text-align:left}
.better{color:#1a7f37;font-weight:600}.worse{color:#b35900;font-weight:600}
.legend{margin:0 0 10px;color:#3a4250}
.legend .tok{cursor:default}
ol.sents{margin:0;padding-left:26px}
ol.sents li{margin:0 0 12px;line-height:2.05;font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:13px}
.sep{color:#9aa3af;padding:0 4px}
.tok{position:relative;border-radius:4px;padding:1px 4px;cursor:help;white-space:nowrap}
.tok.ok{background:#c9efcf;color:#0f5a24;border:1px solid #7fcf8f}
.tok.bad{background:#ffdcb8;color:#8a3c00;border:1px solid #f3a562}
.truth{margin-left:4px;padding:0 4px;border-radius:3px;background:#fff;color:#0f5a24;font-size:11px;border:1px solid #7fcf8f}
.truth::before{content:"\\2192 "}
.top3{display:none;position:absolute;left:0;top:100%;z-index:5;margin-top:3px;padding:3px 8px;border-radius:4px;
  background:#1d2430;color:#fff;font-size:11px;line-height:1.5;white-space:nowrap;box-shadow:0 2px 6px rgba(0,0,0,.25)}
.tok:hover .top3{display:block}
#show-top3:checked~ol .top3{display:inline;position:static;margin:0 0 0 4px;padding:0 5px;box-shadow:none;
  background:#eef1f5;color:#3a4250}
.switch{font-size:12px;color:#3a4250;margin-left:4px}
table.cm td{text-align:center;min-width:64px;padding:6px 10px;border:1px solid #e6e9ef}
table.cm th{text-align:center;padding:4px 10px}
.muted{color:#5b6472;font-size:12px}
"""


def document(title: str, subtitle: str, sections: list[tuple[str, str]], notes: list[str]) -> str:
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
    body += "".join(f"<section><h2>{escape(h)}</h2>{html}</section>" for h, html in sections)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>\n'
            f'<body><main><h1>{escape(title)}</h1><p class="sub">{escape(subtitle)} &middot; bertprep report, '
            f'{escape(when)}</p>\n{body}</main></body></html>\n')


def image(data_uri: str, alt: str) -> str:
    return f'<img class="curves" alt="{escape(alt)}" src="{data_uri}">'


def _value(v) -> str:
    if v is None:
        return "&mdash;"
    if isinstance(v, (list, tuple)):
        return escape(", ".join(map(str, v[:3]))) + (f", &hellip; ({len(v)} in all)" if len(v) > 3 else "")
    if isinstance(v, dict):
        return escape(json.dumps(v, separators=(", ", ": ")))
    if isinstance(v, float):
        return escape(f"{v:g}")
    return escape(str(v))


def _kv(d: dict) -> str:
    return '<table class="kv">' + "".join(f"<tr><td>{escape(str(k))}</td><td>{_value(v)}</td></tr>"
                                          for k, v in d.items()) + "</table>"


def settings(groups: dict[str, dict], source: str) -> str:
    """Every setting, folded: key/value tables side by side, one per group (model, training, data)."""
    parts = [f'<div><h3 class="muted">{escape(name)}</h3>{_kv(d)}</div>' for name, d in groups.items() if d]
    if not parts:
        return '<p class="muted">none recorded</p>'
    return (f"<details><summary>all settings ({escape(source)})</summary>"
            f'<div class="groups">{"".join(parts)}</div></details>')


def facts(d: dict) -> str:
    return _kv(d)


def figures(before: dict, after: dict, step: int, files: int) -> str:
    """Validation figures of the model before training and at its last checkpoint."""
    rows = [("MLM accuracy", "val_mlm_acc", lambda v: f"{100 * v:.2f}%", True),
            ("MLM loss (per masked token)", "val_loss", lambda v: f"{v:.4f}", False),
            ("perplexity", "val_ppl", lambda v: f"{v:,.1f}", False),
            ("NSP accuracy", "val_nsp_acc", lambda v: f"{100 * v:.2f}%", True)]
    out = ['<table class="num"><tr><th>validation</th><th>untrained (step 0)</th>'
           f"<th>trained (step {step:,})</th></tr>"]
    for name, key, fmt, higher in rows:
        if key in before and key in after:
            good = (after[key] > before[key]) == higher
            out.append(f"<tr><td>{name}</td><td>{fmt(before[key])}</td>"
                       f'<td class="{"better" if good else "worse"}">{fmt(after[key])}</td></tr>')
    out.append("</table>")
    out.append(f'<p class="muted">{after.get("val_tokens", 0):,} masked tokens of {files} validation shard file(s); '
               "the untrained model has this run's shape and the random initial weights its --seed gives.</p>")
    return "".join(out)


def _masked(t: dict) -> str:
    top = " &middot; ".join(f"{escape(w)} {p:.2f}" for w, p in t["top"])
    tip = f"input {t['input']}; top 3: " + ", ".join(f"{w} {p:.2f}" for w, p in t["top"])
    truth = "" if t["ok"] else f'<span class="truth">{escape(t["truth"])}</span>'
    return (f'<span class="tok {"ok" if t["ok"] else "bad"}" title="{escape(tip)}">{escape(t["text"])}{truth}'
            f'<span class="top3">{top}</span></span>')


def sentences(examples: list[dict]) -> str:
    """Validation sentences, each masked position coloured by whether the top-1 guess is right."""
    right = sum(t.get("ok") is True for ex in examples for t in ex["tokens"])
    total = sum(t.get("ok") is not None for ex in examples for t in ex["tokens"])
    items = []
    for ex in examples:
        words = []
        for t in ex["tokens"]:
            if t.get("sep"):
                words.append(' <span class="sep">|</span>')
            elif "ok" in t:
                words.append(" " + _masked(t))
            elif t["text"].startswith("##") and words:
                words.append(escape(t["text"][2:]))  # a word piece joins the word before it
            else:
                words.append(" " + escape(t["text"]))
        items.append(f"<li>{''.join(words).strip()}</li>")
    return (f'<p class="legend"><span class="tok ok">word</span> top-1 guess is the true token &nbsp; '
            f'<span class="tok bad">guess<span class="truth">true</span></span> wrong guess, the true token '
            f"beside &nbsp; (hover a guess for the top 3 with probabilities). Right: {right} of {total} "
            f"({100 * right / max(total, 1):.1f}%).</p>"
            f'<input type="checkbox" id="show-top3"><label class="switch" for="show-top3">show the top 3 beside '
            f'every guess</label><ol class="sents">{"".join(items)}</ol>')


def confusion(matrix, source: str, majority: float) -> str:
    """Rows are true classes, columns predicted; a cell's shade is its share of the row."""
    k, n = len(matrix), int(matrix.sum())
    head = "".join(f"<th>{j}</th>" for j in range(k))
    rows = []
    for i in range(k):
        total = max(int(matrix[i].sum()), 1)
        cells = []
        for j in range(k):
            share = matrix[i, j] / total
            rgb = "46,160,67" if i == j else "230,120,20"
            cells.append(f'<td style="background:rgba({rgb},{0.08 + 0.6 * share:.2f})">{int(matrix[i, j])}</td>')
        rows.append(f"<tr><th>{i}</th>{''.join(cells)}<td class=\"muted\">{int(matrix[i].sum())}</td></tr>")
    acc = float(matrix.trace()) / max(n, 1)
    return (f'<table class="cm"><tr><th>true \\ predicted</th>{head}<th class="muted">total</th></tr>'
            f'{"".join(rows)}</table><p class="muted">{n:,} sentences of {escape(source)}: accuracy '
            f"{100 * acc:.2f}%; always answering the most common class would score {100 * majority:.2f}%.</p>")


def errors(rows: list[dict]) -> str:
    """Wrong predictions, surest first (or the largest rating errors): sentence (pair), truth, guess."""
    if not rows:
        return "<p>No errors on the validation set.</p>"
    classes, rated = "pred" in rows[0], "rating" in rows[0]
    head = ["#", "sentence"] + (["true", "predicted", "confidence"] if classes else []) + (
        ["rating", "predicted rating"] if rated else [])
    body = []
    for n, r in enumerate(rows, 1):
        text = escape(r["text"]) + (f' <span class="sep">||</span> {escape(r["text_b"])}' if "text_b" in r else "")
        cells = [str(n), text]
        if classes:
            cells += [str(r["label"]), f'<span class="worse">{r["pred"]}</span>', f"{r['prob']:.3f}"]
        if rated:
            cells += [f"{r['rating']:g}", f"{r['pred_rating']:.2f}"]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<table class="kv"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>")
