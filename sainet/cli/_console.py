"""A rich Console that never writes a control character it did not make itself.

File, record and class names reach the terminal in messages and table cells. rich strips BEL, BS,
CR, VT and FF from text but not ESC or C1 codes, so a crafted name could recolour the report,
rewrite lines or retitle the window. `SafeConsole` shows every control character in text (not the
newline and tab rich lays out) as ``\\xNN`` when the text is rendered, whatever renderable holds it;
rich's own control segments (cursor moves of a live progress bar) and styles are untouched. JSON
output is made with `json.dumps`, which escapes them (``\\u001b``) already.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.segment import Segment

from sainet.core.safepath import printable

__all__ = ["SafeConsole"]


class SafeConsole(Console):
    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        safe = (seg if seg.control else Segment(printable(seg.text, keep="\n\t"), seg.style, seg.control) for seg in buffer)
        return super()._render_buffer(safe)
