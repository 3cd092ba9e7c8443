"""The outputs of an evaluation: the JSON layout, the text table and the self-contained HTML A/B report
(audio players and spectrograms inlined as base64, no external resources)."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from melvoc.data.io import audio_info, read_audio
from melvoc.data.sources import read_source
from melvoc.evaluation.scoring import SetResult
from melvoc.metrics import HIGHER_IS_BETTER

__all__ = ["format_table", "to_json", "write_report"]


def _nan_to_none(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_json(sets: Sequence[SetResult], metrics: Sequence[str]) -> dict[str, object]:
    """One set: ``{"metrics": {name: {"mean", "ci95", "n"}}, "files": [{"name", name: value}]}``;
    several: that object per set, keyed by set name. NaN is written as ``null``."""
    def one(result: SetResult) -> dict[str, object]:
        summary = {m: {k: _nan_to_none(v) for k, v in s.items()} for m, s in result.summary(metrics).items()}
        files = [{k: _nan_to_none(v) for k, v in row.items()} for row in result.files]
        return {"metrics": summary, "files": files}

    if len(sets) == 1:
        return one(sets[0])
    return {result.name: one(result) for result in sets}


def _cell(stats: dict[str, float]) -> str:
    if stats["n"] == 0:
        return "n/a (n=0)"
    ci = "" if not math.isfinite(stats["ci95"]) else f" ± {stats['ci95']:.3f}"
    return f"{stats['mean']:.3f}{ci} (n={stats['n']})"


def format_table(sets: Sequence[SetResult], metrics: Sequence[str]) -> str:
    """A plain-text table: a row per metric, a column per set, ``mean ± 95% CI (n=k)``."""
    summaries = [result.summary(metrics) for result in sets]
    header = ["metric"] + [result.name for result in sets]
    rows = [header] + [
        [f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}"] + [_cell(s[m]) for s in summaries] for m in metrics
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _wav_base64(audio: np.ndarray, rate: int) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _spectrogram_base64(audio: np.ndarray, rate: int) -> str:
    """A small log-magnitude STFT picture (dB, 80 dB range) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_fft = 1024 if rate <= 24000 else 2048
    window = np.hanning(n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, n_fft // 2), n_fft)[:: n_fft // 4]
    db = 20 * np.log10(np.abs(np.fft.rfft(frames * window, axis=-1)).T + 1e-5)
    figure = Figure(figsize=(3.6, 1.5), dpi=80, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    ax = figure.subplots()
    top = float(db.max(initial=-100.0))
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
              extent=(0, audio.shape[0] / rate, 0, rate / 2000))
    ax.set_xlabel("s", fontsize=7)
    ax.set_ylabel("kHz", fontsize=7)
    ax.tick_params(labelsize=6)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}
th{background:#f2f2f2}
td.best{font-weight:bold;background:#e8f5e9}
.clip img{display:block;width:288px;height:120px}
.clip audio{width:288px;height:32px}
.vals{font-size:12px;color:#333}
"""


def write_report(path: str | os.PathLike, reference: str | os.PathLike, sets: Sequence[SetResult],
                 metrics: Sequence[str], *, sampling_rate: Optional[int] = None, media_files: int = 20) -> Path:
    """One self-contained HTML page: the metrics table, then per file the reference and each set side by
    side (audio players as base64 WAV, spectrograms as base64 PNG, the file's scores). Media for the
    first ``media_files`` files; every file's scores are listed."""
    path = Path(path).expanduser()
    summaries = [result.summary(metrics) for result in sets]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>melvoc evaluate</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>melvoc evaluate</h1><p>reference: <code>{html.escape(str(reference))}</code>; "
        f"{len(sets[0].files) if sets else 0} file(s); mean ± 95% CI (n)</p>",
        "<h2>Metrics</h2><table><tr><th>metric</th>",
        *[f"<th>{html.escape(r.name)}</th>" for r in sets],
        "</tr>",
    ]
    for m in metrics:
        means = [s[m]["mean"] for s in summaries]
        finite = [v for v in means if math.isfinite(v)]
        best = (max(finite) if HIGHER_IS_BETTER[m] else min(finite)) if len(finite) > 1 else None
        parts.append(f"<tr><th>{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}</th>")
        for s, mean in zip(summaries, means):
            css = " class='best'" if best is not None and mean == best else ""
            parts.append(f"<td{css}>{html.escape(_cell(s[m]))}</td>")
        parts.append("</tr>")
    parts.append("</table><h2>Files</h2><table><tr><th>file</th><th>reference</th>")
    parts += [f"<th>{html.escape(r.name)}</th>" for r in sets]
    parts.append("</tr>")
    references = {entry.name: entry.path for entry in read_source(Path(reference).expanduser())}
    for index, row in enumerate(sets[0].files if sets else []):
        stem = str(row["name"])
        parts.append(f"<tr><td>{html.escape(stem)}</td>")
        media = index < media_files
        info = audio_info(references[stem])
        rate = sampling_rate or info.sampling_rate
        cells = [("reference", read_audio(info, rate) if media else None, "")]
        for result in sets:
            values = result.files[index]
            text = "<br>".join(
                f"{m}: {float(values[m]):.3f}" if math.isfinite(float(values[m])) else f"{m}: n/a"  # type: ignore[arg-type]
                for m in metrics
            )
            audio = read_audio(audio_info(result.paths[stem]), rate) if media else None
            cells.append((result.name, audio, text))
        for name, audio, text in cells:
            parts.append("<td class='clip'>")
            if audio is not None:
                parts.append(f"<audio controls preload='metadata' src='data:audio/wav;base64,{_wav_base64(audio, rate)}'></audio>")
                parts.append(f"<img alt='{html.escape(name)} spectrogram' src='data:image/png;base64,{_spectrogram_base64(audio, rate)}'>")
            parts.append(f"<div class='vals'>{text}</div></td>")
        parts.append("</tr>")
    parts.append("</table></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


