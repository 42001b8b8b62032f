"""Text from indexed pages made safe to print on a terminal (pure).

Stored text is whatever a page held, escape sequences included: ``ESC[5m`` would make a terminal
blink, an OSC 8 sequence turns text into a hyperlink to anywhere, OSC 52 writes the clipboard, and a
lone carriage return or backspace can overprint what was printed before. :func:`terminal_safe`
neutralises all of it for human-readable output; stored rows and ``--json`` output keep the exact text
(JSON escapes every control character).

* whole escape sequences are removed: CSI (``ESC [`` … final byte), OSC / DCS / SOS / PM / APC strings
  (up to BEL or ST, or to the end of the text when unterminated), two- and three-byte ``ESC`` sequences,
  and their 8-bit C1 forms (U+009B CSI, U+009D OSC, …): the visible text between them stays;
* any other C0/C1 control character and DEL becomes U+FFFD (``\\n`` and ``\\t`` stay unless
  ``keep_newlines=False``, which turns them into spaces), as do the bidirectional overrides and
  isolates (U+202A–U+202E, U+2066–U+2069) that can reorder what a line appears to say.

:func:`clip` shortens text for a column *after* neutralising it, so a cut never falls inside a sequence.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

# ESC-introduced string controls and their C1 forms: OSC (]), DCS (P), SOS (X), PM (^), APC (_), ended by
# BEL or ST (ESC \ or U+009C); an unterminated one runs to the end of the text.
_STRING = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c|$)"
# CSI: ESC [ or U+009B, parameter bytes 0x30-0x3F, intermediate bytes 0x20-0x2F, one final byte 0x40-0x7E
# (a truncated CSI with no final byte is removed as far as it goes).
_CSI = r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
# Other ESC sequences: ESC, intermediate bytes, one final byte (ESC 7, ESC ( B, ESC # 8, …).
_ESC = r"\x1b[\x20-\x2f]*[\x30-\x7e]?"
_SEQUENCE = re.compile(f"{_STRING}|{_CSI}|{_ESC}")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_LAYOUT = re.compile("[\t\n]")


def terminal_safe(text: str | None, *, keep_newlines: bool = True) -> str:
    """``text`` with escape sequences removed and other control characters replaced (see the module docstring)."""
    if not text:
        return ""
    out = _SEQUENCE.sub("", text)
    out = _CONTROL.sub(REPLACEMENT, out)
    if not keep_newlines:
        out = _LAYOUT.sub(" ", out)
    return out


def clip(text: str | None, width: int) -> str:
    """One line of at most ``width`` characters: neutralised, whitespace runs collapsed, cut with ``…``."""
    flat = " ".join(terminal_safe(text, keep_newlines=False).split())
    if width <= 0:
        return ""
    return flat if len(flat) <= width else flat[: width - 1] + "…"


_INTRODUCERS = "\x1b\x90\x98\x9b\x9d\x9e\x9f"


class StreamSafe:
    """:func:`terminal_safe` over text that arrives in pieces (a streamed LLM answer).

    A piece ending inside an escape sequence is held back until the sequence is complete (or the stream
    ends, :meth:`flush`), so a sequence split across pieces is removed whole, never printed in part.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, piece: str) -> str:
        text = self._pending + piece
        cut = max(text.rfind(c) for c in _INTRODUCERS)
        if cut >= 0 and _SEQUENCE.match(text, cut) is not None and _SEQUENCE.match(text, cut).end() == len(text) \
                and not _complete_at_end(text[cut:]):
            self._pending, text = text[cut:], text[:cut]
        else:
            self._pending = ""
        return terminal_safe(text)

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return terminal_safe(text)


def _complete_at_end(tail: str) -> bool:
    """True when the escape sequence ``tail`` (running to the end of the text) is terminated."""
    if tail[:2] in ("\x1b]", "\x1bP", "\x1bX", "\x1b^", "\x1b_") or tail[0] in "\x90\x98\x9d\x9e\x9f":
        return tail.endswith(("\x07", "\x1b\\", "\x9c")) and len(tail) > 2
    if tail.startswith("\x1b[") or tail[0] == "\x9b":
        body = tail[2:] if tail[0] == "\x1b" else tail[1:]
        return bool(body) and "\x40" <= body[-1] <= "\x7e"
    return len(tail) >= 2 and "\x30" <= tail[-1] <= "\x7e"
