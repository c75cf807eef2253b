"""`gsv-accel report RUN_DIR [--out FILE]`: one self-contained HTML page about a run, to read and listen to.

It reads only the run folder, so it works offline, for a run that is still going (a half-written last
line or sample folder is skipped) and for a run that was moved:

* `metrics.jsonl` (`gsv_accel.tracking.append_metrics_log`): training losses, validation metrics,
  `plateau/event` (LR reductions, rollbacks, the early stop). Runs older than that file: the
  validation lines of `train.log`;
* `samples/step_*/metrics.json` and the audio and mel images beside it (`gsv_accel.samples`);
* `checkpoints/step_*/manifest.json`, the files under `exports/`, `config.yaml`, `train.log`.

Everything is embedded: plots are inline SVG drawn here, audio is base64 WAV in `<audio>` elements,
mel images are base64 PNG. No script, nothing fetched. The samples of at most `max_validations`
validations are embedded (the best, the last and evenly spaced others: about 0.7 MB per sample
pair of 4 s at 32 kHz), so the page stays a few MB.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .samples import METRICS_FILE, SAMPLES_DIR
from .tracking import METRICS_LOG

# Which way is better for the metrics the recipes report (the monitored one follows plateau.mode).
HIGHER_IS_BETTER = {"val/speaker_sim", "val/score", "val/top3_acc"}
# plateau/event codes (gsv_accel.plateau.EVENTS) worth marking on the plots.
EVENT_LABELS = {2: ("LR reduced", "#d97706"), 3: ("rollback", "#7c3aed"), 4: ("early stop", "#dc2626")}
REPORT_NAME = "report.html"


class ReportError(ValueError):
    """The folder is not a run folder (a user error: exit 2)."""


@dataclass
class RunData:
    run_dir: Path
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # key -> step -> value
    epochs: dict[int, int] = field(default_factory=dict)  # step -> epoch
    config_text: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # metrics.json records (+ "folder")
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def monitor(self) -> str:
        return str((self.config.get("plateau") or {}).get("monitor", "val/mel_loss"))

    @property
    def mode(self) -> str:
        return str((self.config.get("plateau") or {}).get("mode", "min"))

    def higher_is_better(self, key: str) -> bool:
        return self.mode == "max" if key == self.monitor else key in HIGHER_IS_BETTER

    def validation_keys(self) -> list[str]:
        keys = [k for k in self.series if k.startswith("val/")]
        return sorted(keys, key=lambda k: (k != self.monitor, k))

    def best_step(self, key: str) -> int | None:
        values = {s: v for s, v in self.series.get(key, {}).items() if v is not None and math.isfinite(v)}
        if not values:
            return None
        pick = max if self.higher_is_better(key) else min
        # Ties go to the earliest step, as the plateau controller keeps its first best.
        best = pick(values.values())
        return min(s for s, v in values.items() if v == best)

    def events(self) -> list[tuple[int, str, str]]:
        out = []
        for step, code in sorted(self.series.get("plateau/event", {}).items()):
            if code is not None and int(code) in EVENT_LABELS:
                label, color = EVENT_LABELS[int(code)]
                out.append((step, label, color))
        return out


# ------------------------------------------------------------------------------------------ reading


def read_metrics_log(path: Path, data: RunData) -> None:
    """Rows of `metrics.jsonl`; for a step, the last row holding a key wins (a resumed run repeats
    the steps after its checkpoint). A line that does not parse (being written) is skipped."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            step = int(row.pop("step"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        epoch = row.pop("epoch", None)
        row.pop("time", None)
        if epoch is not None:
            data.epochs[step] = int(epoch)
        for key, value in row.items():
            if isinstance(value, (int, float)) or value is None:
                data.series.setdefault(key, {})[step] = None if value is None else float(value)


_VALIDATION_LINE = re.compile(r"step (\d+) epoch (\d+): (.*?) \((.*)\)$")
_METRIC = re.compile(r"([\w/.-]+) = ([-+0-9.eEnaif]+)")


def read_validation_lines(lines: list[str], data: RunData) -> None:
    """Validation metrics from train.log (`step N epoch E: m = v; k = v, ... (reason)`), for runs
    without metrics.jsonl; events from the reasons."""
    for line in lines:
        match = _VALIDATION_LINE.search(line)
        if not match:
            continue
        step, epoch = int(match.group(1)), int(match.group(2))
        data.epochs[step] = epoch
        for key, value in _METRIC.findall(match.group(3)):
            try:
                data.series.setdefault(key, {})[step] = float(value)
            except ValueError:
                continue
        reason = match.group(4)
        code = (4 if "stopping" in reason else 3 if "rolling back" in reason
                else 2 if "LR scale" in reason else None)
        if code is not None:
            data.series.setdefault("plateau/event", {})[step] = float(code)


def read_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a folder; give a run folder (run.output_dir)")
    markers = [run_dir / name for name in ("train.log", "config.yaml", METRICS_LOG, "checkpoints")]
    if not any(path.exists() for path in markers):
        raise ReportError(f"{run_dir}: not a run folder (no train.log, config.yaml, {METRICS_LOG} or "
                          "checkpoints/); give the folder a recipe's run.output_dir names")
    data = RunData(run_dir)
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        import yaml

        data.config_text = config_path.read_text(encoding="utf-8", errors="replace")
        try:
            loaded = yaml.safe_load(data.config_text)
            data.config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            data.config = {}
    log_path = run_dir / "train.log"
    if log_path.is_file():
        data.log_lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    if (run_dir / METRICS_LOG).is_file():
        read_metrics_log(run_dir / METRICS_LOG, data)
    else:
        read_validation_lines(data.log_lines, data)
    for record_path in sorted((run_dir / SAMPLES_DIR).glob(f"step_*/{METRICS_FILE}")):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            record["step"] = int(record["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        record["folder"] = record_path.parent
        data.samples.append(record)
    for manifest_path in sorted((run_dir / "checkpoints").glob("step_*/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            data.checkpoints.append({"name": manifest_path.parent.name, "step": int(manifest["step"]),
                                     "epoch": manifest.get("epoch"), "best": bool(manifest.get("best")),
                                     "reason": (manifest.get("extra") or {}).get("reason", ""),
                                     "created": manifest.get("created", ""),
                                     "metrics": manifest.get("metrics") or {}})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    exports = run_dir / "exports"
    if exports.is_dir():
        for path in sorted(p for p in exports.rglob("*") if p.is_file() and not p.name.startswith(".")):
            data.exports.append({"path": path.relative_to(run_dir).as_posix(), "bytes": path.stat().st_size,
                                 "mtime": path.stat().st_mtime, **_export_position(path.name)})
    return data


def _export_position(name: str) -> dict[str, int]:
    """Step and/or epoch from an export's file name (S2 `<exp>_e<E>_s<S>.pth`, S1 `<exp>-e<E>.ckpt`)."""
    found = {}
    step = re.search(r"_s(\d+)\.\w+$", name)
    epoch = re.search(r"[-_]e(\d+)(?:_s\d+)?\.\w+$", name)
    if step:
        found["step"] = int(step.group(1))
    if epoch:
        found["epoch"] = int(epoch.group(1))
    return found


# ------------------------------------------------------------------------------------------ plots


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _tick_labels(ticks: list[float]) -> list[str]:
    """Shortest labels (3 to 8 significant digits) that tell the ticks apart."""
    for digits in range(3, 9):
        labels = [f"{t:.{digits}g}" for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def line_chart(title: str, points: list[tuple[int, float]], *, best: int | None = None,
               events: list[tuple[int, str, str]] = (), width: int = 440, height: int = 220) -> str:
    """An inline SVG line chart of (step, value) points, the best step circled, events as lines."""
    points = sorted((s, v) for s, v in points if v is not None and math.isfinite(v))
    esc = html.escape
    left, right, top, bottom = 62, 12, 28, 34
    inner_w, inner_h = width - left - right, height - top - bottom
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
             f'<text x="{left}" y="16" class="title">{esc(title)}</text>']
    if not points:
        parts.append(f'<text x="{left}" y="{top + inner_h / 2}" class="note">no finite values</text></svg>')
        return "".join(parts)
    xs = [s for s, _ in points] + [s for s, _, _ in events]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = min(v for _, v in points), max(v for _, v in points)
    if y_high == y_low:
        pad = abs(y_low) * 0.05 or 1.0
        y_low, y_high = y_low - pad, y_high + pad
    else:
        pad = (y_high - y_low) * 0.06
        y_low, y_high = y_low - pad, y_high + pad

    def x_of(step: float) -> float:
        return left + (step - x_low) / (x_high - x_low) * inner_w

    def y_of(value: float) -> float:
        return top + (y_high - value) / (y_high - y_low) * inner_h

    parts.append(f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" class="frame"/>')
    y_ticks = _nice_ticks(y_low, y_high)
    for tick, label in zip(y_ticks, _tick_labels(y_ticks), strict=True):
        y = y_of(tick)
        parts.append(f'<line x1="{left}" x2="{left + inner_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{label}</text>')
    for tick in _nice_ticks(x_low, x_high, 6):
        if float(tick).is_integer():
            x = x_of(tick)
            parts.append(f'<text x="{x:.1f}" y="{top + inner_h + 16}" class="tick" text-anchor="middle">'
                         f'{int(tick)}</text>')
    parts.append(f'<text x="{left + inner_w / 2}" y="{height - 4}" class="tick" text-anchor="middle">'
                 'step</text>')
    for step, label, color in events:
        x = x_of(step)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + inner_h}" stroke="{color}" '
                     f'class="event"><title>{esc(label)} at step {step}</title></line>'
                     f'<text x="{x + 3:.1f}" y="{top + 10}" class="event-label" fill="{color}">'
                     f'{esc(label)}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x_of(s):.1f},{y_of(v):.1f}" for i, (s, v) in enumerate(points))
    parts.append(f'<path d="{path}" class="line"/>')
    if len(points) <= 60:
        for step, value in points:
            parts.append(f'<circle cx="{x_of(step):.1f}" cy="{y_of(value):.1f}" r="2.5" class="dot">'
                         f'<title>step {step}: {value:.6g}</title></circle>')
    if best is not None:
        value = dict(points).get(best)
        if value is not None:
            x, y = x_of(best), y_of(value)
            anchor = "end" if x > left + inner_w * 0.7 else "start"
            dx = -8 if anchor == "end" else 8
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" class="best"><title>best: step {best}, '
                         f'{value:.6g}</title></circle><text x="{x + dx:.1f}" y="{y - 8:.1f}" '
                         f'class="best-label" text-anchor="{anchor}">best {value:.4g} @ {best}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------ page


def _data_uri(path: Path, mime: str) -> str | None:
    try:
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def _audio(path: Path) -> str:
    uri = _data_uri(path, "audio/wav")
    if uri is None:
        return '<span class="note">missing</span>'
    return f'<audio controls preload="metadata" src="{uri}"></audio>'


def _image(path: Path, alt: str) -> str:
    uri = _data_uri(path, "image/png")
    if uri is None:
        return ""
    return f'<img class="mel" alt="{html.escape(alt)}" src="{uri}">'


def _metrics_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{html.escape(k)} = {v:.5g}" if isinstance(v, (int, float)) else f"{html.escape(k)} = –"
                     for k, v in metrics.items())


def choose_validations(steps: list[int], best: int | None, limit: int) -> list[int]:
    """At most `limit` of the validation steps with samples: the best, the last, the first and evenly
    spaced others, in step order."""
    if limit <= 0 or not steps:
        return []
    steps = sorted(steps)
    chosen = {steps[-1]}
    if best in steps:
        chosen.add(best)
    if len(chosen) < limit:
        chosen.add(steps[0])
    remaining = limit - len(chosen)
    if remaining > 0:
        others = [s for s in steps if s not in chosen]
        if len(others) <= remaining:
            chosen.update(others)
        else:
            spread = max(remaining - 1, 1)
            chosen.update(others[round(i * (len(others) - 1) / spread)] for i in range(remaining))
    return sorted(chosen)[-limit:] if len(chosen) > limit else sorted(chosen)


def _status(data: RunData) -> str:
    for line in reversed(data.log_lines):
        match = re.search(r"training stopped: (.*)$", line)
        if match:
            return f"stopped: {match.group(1)}"
    last = max((max(v) for v in data.series.values() if v), default=None)
    return "running or interrupted" + (f" (last logged step {last})" if last is not None else "")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2937;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#4b5563;font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fafafa;border:1px solid #e5e7eb}
.chart .title{font-size:13px;font-weight:600;fill:#111827}.chart .tick{font-size:10px;fill:#6b7280}
.chart .note{font-size:12px;fill:#9ca3af}.chart .frame{fill:none;stroke:#d1d5db}
.chart .grid{stroke:#eef0f3}.chart .line{fill:none;stroke:#2563eb;stroke-width:1.6}
.chart .dot{fill:#2563eb}.chart .best{fill:none;stroke:#16a34a;stroke-width:2.5}
.chart .best-label{font-size:11px;fill:#15803d;font-weight:600}
.chart .event{stroke-width:1.3;stroke-dasharray:4 3}.chart .event-label{font-size:10px}
table{border-collapse:collapse;font-size:13px;margin:4px 0 12px}
td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}tr.best td{background:#f0fdf4}td.utt{max-width:320px;overflow-wrap:anywhere}
img.mel{display:block;height:96px;max-width:420px;image-rendering:pixelated;margin-top:4px}
audio{width:260px;display:block}pre{background:#f9fafb;border:1px solid #e5e7eb;padding:8px;
font-size:12px;overflow:auto;max-height:420px}.note{color:#9ca3af}.tag{color:#15803d;font-weight:600}
"""


def build_report(run_dir: str | Path, max_validations: int = 8) -> str:
    """The report page of a run folder as one HTML string (see the module docstring)."""
    data = read_run(run_dir)
    esc = html.escape
    monitor = data.monitor
    best_monitor = data.best_step(monitor)
    events = data.events()
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<link rel="icon" href="data:,">',
           f"<title>{esc(data.run_dir.name)}: gsv_accel run report</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(data.run_dir.name)}</h1>",
           f'<div class="meta">{esc(str(data.run_dir))} · {esc(_status(data))} · report written '
           f'{esc(time.strftime("%Y-%m-%d %H:%M:%S"))}</div>',
           f'<div class="meta">monitor <b>{esc(monitor)}</b> ({esc(data.mode)})']
    if best_monitor is not None:
        value = data.series[monitor][best_monitor]
        out.append(f" · best {value:.6g} at step {best_monitor} (epoch {data.epochs.get(best_monitor, '?')})")
    out.append("</div>")

    out.append('<h2 id="validation">Validation metrics</h2>')
    val_keys = data.validation_keys()
    if val_keys:
        out.append('<div class="charts">')
        for key in val_keys:
            direction = "higher is better" if data.higher_is_better(key) else "lower is better"
            out.append(line_chart(f"{key} ({direction})", list(data.series[key].items()),
                                  best=data.best_step(key), events=events))
        out.append("</div>")
        if events:
            listed = "; ".join(f"{esc(label)} at step {step}" for step, label, _ in events)
            out.append(f'<div class="meta">{listed}</div>')
    else:
        out.append('<p class="note">no validation yet</p>')

    out.append('<h2 id="training">Training</h2>')
    train_keys = sorted((k for k in data.series
                         if k.startswith("train/") and k != "train/nonfinite_steps_total"),
                        key=lambda k: (not k.startswith("train/loss"), k))
    if train_keys:
        out.append('<div class="charts">')
        for key in train_keys:
            out.append(line_chart(key, list(data.series[key].items()), events=events, width=360, height=200))
        out.append("</div>")
    else:
        out.append(f'<p class="note">no training rows (no {METRICS_LOG} in this run folder)</p>')

    out.append('<h2 id="samples">Samples</h2>')
    by_step = {record["step"]: record for record in data.samples}
    chosen = choose_validations(list(by_step), best_monitor, max_validations)
    if chosen:
        if len(chosen) < len(by_step):
            out.append(f'<p class="meta">{len(chosen)} of {len(by_step)} validations shown (the best, the '
                       "last and evenly spaced others; <code>--max-validations</code> changes it)</p>")
        for step in chosen:
            out.append(_samples_section(by_step[step], best=step == best_monitor))
    else:
        out.append('<p class="note">no samples saved yet</p>')

    out.append('<h2 id="checkpoints">Checkpoints</h2>')
    if data.checkpoints:
        out.append("<table><tr><th>checkpoint</th><th>step</th><th>epoch</th><th>saved because</th>"
                   "<th>metrics</th></tr>")
        for ck in data.checkpoints:
            best = ck["step"] == best_monitor
            tag = ' <span class="tag">best</span>' if best else ""
            out.append(f'<tr{" class=best" if best else ""}><td>{esc(ck["name"])}{tag}</td>'
                       f'<td>{ck["step"]}</td><td>{esc(str(ck["epoch"]))}</td><td>{esc(str(ck["reason"]))}</td>'
                       f"<td>{_metrics_text(ck['metrics'])}</td></tr>")
        out.append("</table>")
    else:
        out.append('<p class="note">no complete checkpoint</p>')

    out.append('<h2 id="exports">Exports</h2>')
    if data.exports:
        out.append("<table><tr><th>file</th><th>size</th><th>step</th><th>metrics of that step</th></tr>")
        for export in data.exports:
            metrics = _metrics_at(data, export)
            out.append(f'<tr><td>{esc(export["path"])}</td><td>{export["bytes"] / 1e6:.2f} MB</td>'
                       f'<td>{export.get("step", "")}</td><td>{_metrics_text(metrics)}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="note">no exports yet (written at the end of training)</p>')

    out.append('<h2 id="config">Config</h2>')
    out.append(f"<pre>{esc(data.config_text) or 'no config.yaml'}</pre>")
    out.append('<h2 id="log">train.log (last 40 lines)</h2>')
    out.append(f"<pre>{esc(chr(10).join(data.log_lines[-40:])) or 'no train.log'}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def _metrics_at(data: RunData, export: dict[str, Any]) -> dict[str, float]:
    """The validation metrics of an export's step (or, by epoch only, of the last validation of it)."""
    step = export.get("step")
    if step is None and "epoch" in export:
        steps = [s for s, e in data.epochs.items() if e == export["epoch"]
                 and any(s in data.series[k] for k in data.validation_keys())]
        step = max(steps) if steps else None
    if step is None:
        return {}
    return {k: data.series[k][step] for k in data.validation_keys() if step in data.series[k]}


def _samples_section(record: dict[str, Any], best: bool) -> str:
    esc = html.escape
    folder: Path = record["folder"]
    tag = ' <span class="tag">best</span>' if best else ""
    parts = [f'<h3>step {record["step"]} (epoch {esc(str(record.get("epoch", "?")))}){tag}</h3>',
             f'<div class="meta">{_metrics_text(record.get("metrics") or {})}'
             + (f" · {esc(str(record['decision']))}" if record.get("decision") else "") + "</div>",
             "<table><tr><th>utterance</th><th>real</th><th>generated</th><th>metrics</th></tr>"]
    for sample in record.get("samples") or []:
        real = ""
        if sample.get("real_audio"):
            real = _audio(folder / sample["real_audio"])
            if sample.get("real_mel"):
                real += _image(folder / sample["real_mel"], f"real mel of {sample['name']}")
        generated = _audio(folder / sample["audio"]) if sample.get("audio") else ""
        if sample.get("mel"):
            generated += _image(folder / sample["mel"], f"generated mel of {sample['name']}")
        words = ""
        if sample.get("text"):
            words += f'<div class="meta">text: {esc(sample["text"])}</div>'
        if sample.get("transcript") is not None:
            words += f'<div class="meta">heard: {esc(sample["transcript"])}</div>'
        parts.append(f'<tr><td class="utt">{esc(sample["name"])}{words}</td><td>{real}</td>'
                     f'<td>{generated}</td><td>{_metrics_text(sample.get("metrics") or {})}</td></tr>')
    parts.append("</table>")
    return "".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None, max_validations: int = 8) -> Path:
    """Write the report (default `<run>/report.html`, atomically); returns its path."""
    from .atomic import write_text_atomic

    page = build_report(run_dir, max_validations=max_validations)
    target = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(target, page)
