"""Byte and duration formats of every progress line and summary (model_sync, job_progress, the timeline)."""

from __future__ import annotations

MIB = 1024 * 1024


def human_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s, tenths=False):
    """12s, 5m02s, 1h02m; with tenths (the timeline's durations) 12.3s, 5m02.1s, 1h02m05s."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s" if tenths else f"{int(s)}s"
    if s < 3600:
        return f"{int(s // 60)}m{s % 60:04.1f}s" if tenths else f"{int(s) // 60}m{int(s) % 60:02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" + (f"{int(s % 60):02d}s" if tenths else "")

