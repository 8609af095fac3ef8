"""PNG files of every figure, through kaleido and a Chromium already on the machine."""

from __future__ import annotations

from pathlib import Path

from tuner.report._sections import Section


def system_chromium() -> str | None:
    """A Chromium already on this machine; kaleido is never allowed to download one."""
    from choreographer.browsers.chromium import Chromium

    return Chromium.find_browser(skip_local=True)


def export_png(sections: list[Section], folder: Path) -> tuple[list[Path], str]:
    """(written files, message)."""
    if system_chromium() is None:
        return [], "PNG export skipped: no system Chromium found (Debian: apt install chromium)"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for section in sections:
        if section.figure is not None:
            path = folder / f"{section.key}.png"
            section.figure.write_image(path, width=1200, height=section.figure.layout.height or 600)
            written.append(path)
    return written, f"wrote {len(written)} PNG files to {folder}"
