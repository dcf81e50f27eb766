"""Outside text shown as text: the one rule for every string the app did not write itself.

URL parameters, record fields, file names, a checkpoint's class names, dataset name, card and
config fields, error messages that quote any of these: Streamlit renders ``st.markdown``,
``st.error``/``warning``/``info``, ``st.caption``, ``st.spinner``, image captions and metric
labels as (GitHub-flavoured) markdown, with emoji shortcodes, ``:colour[...]`` directives,
``:material/...:`` icons and ``$...$`` maths on top. A stranger's ``[Session expired](http://x)``
in ``?points=`` would become a link on the page. So:

* ``md(text)`` is for text inside markdown: every ASCII punctuation character is backslash-escaped
  (CommonMark allows it for all of them), so no emphasis, link, image, heading, list, code,
  HTML, directive or maths survives; GFM's autolinks (``http://``, ``www.``, ``a@b.c``), which
  are found in the text after escapes are resolved, get a word joiner (U+2060, invisible) after
  their first character so nothing can be linked;
* ``plain(text)`` is for places that show text as text (tables, Plotly labels, text drawn into
  a PNG, the view's own DOM text): no escaping, the same cap and visible control characters;
* both cut a string longer than ``limit`` to ``limit`` characters, ``"…"`` and its length, and
  show control and format characters (newlines, NUL, right-to-left overrides, zero-width
  characters, lone surrogates) as ``\\n``/``\\u202e`` escapes: a name cannot reorder, hide or
  break the line it is in, and cannot fail the page's UTF-8 encoding;
* ``code(text)`` is outside text as an inline code span (a file name in monospace): code spans
  are literal in markdown (no escapes, no autolinks, no emoji), so only the fence must be longer
  than any run of backticks inside;
* ``file_stem(name)`` is a download's file name made of safe characters only.

Nothing here imports Streamlit (tests check the rules without a browser; the browser test
``tests/test_hostile_app.py`` checks the page).
"""
from __future__ import annotations

import re
import unicodedata

__all__ = ["ECHO_LIMIT", "NAME_LIMIT", "capped", "code", "file_stem", "md", "plain", "visible"]

ECHO_LIMIT = 300           # characters of one echoed string (a notice quoting a record, an error)
NAME_LIMIT = 120           # characters of a name (a file, a class, a dataset) in running text
_HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}          # controls, format (bidi, zero-width), surrogates, separators
_KEEP = {"\u200d"}                                # the zero-width joiner builds emoji; harmless
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_LINK_START = re.compile(r"(?i)(?<=h)(?=ttps?:)|(?<=f)(?=tp:)|(?<=w)(?=ww\.)|(?=@)|(?<=:)(?=//)")
_JOINER = "\u2060"


def visible(text: str) -> str:
    """``text`` with every control/format character (and a lone surrogate) written as an escape."""
    out = []
    for char in text:
        if char in _NAMED:
            out.append(_NAMED[char])
        elif char not in _KEEP and unicodedata.category(char) in _HIDDEN:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def capped(text: str, limit: int = ECHO_LIMIT) -> str:
    """The first ``limit`` characters, then ``"… (N characters)"`` if there were more."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def plain(text: object, limit: int = ECHO_LIMIT) -> str:
    """Outside text for an element that shows text as text: capped, control characters visible."""
    return visible(capped(str(text), limit))


def md(text: object, limit: int = ECHO_LIMIT) -> str:
    """Outside text for a markdown context: ``plain`` plus escapes, so it renders as itself."""
    shown = _LINK_START.sub(_JOINER, plain(text, limit))
    escaped = _PUNCTUATION.sub(r"\\\1", shown)
    # leading spaces would start an indented code block: keep them as character references
    stripped = escaped.lstrip(" ")
    return "&#32;" * (len(escaped) - len(stripped)) + stripped


def code(text: object, limit: int = NAME_LIMIT) -> str:
    """Outside text as a markdown code span: shown literally, in monospace."""
    shown = plain(text, limit)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", shown)), default=0) + 1)
    # CommonMark strips one space from each end when both ends have one (unless all are spaces)
    pad = " " if shown.startswith("`") or shown.endswith("`") or (
        shown.startswith(" ") and shown.endswith(" ") and shown.strip(" ")) else ""
    return f"{fence}{pad}{shown}{pad}{fence}" if shown else "` `"


def file_stem(name: object, limit: int = 80, fallback: str = "image") -> str:
    """A download's file name stem from an outside name: letters, digits, ``. _ -`` only."""
    stem = str(name).rsplit(".", 1)[0] if "." in str(name).lstrip(".") else str(name)
    safe = re.sub(r"[^0-9A-Za-z._-]+", "_", unicodedata.normalize("NFKC", stem)).strip("._-")[:limit]
    return safe or fallback
