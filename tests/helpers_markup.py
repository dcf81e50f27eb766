"""Markdown and HTML payloads a stranger can put into the app (issue 26), shared by the rules'
tests (test_literal.py), the AppTest channels and the browser test (test_hostile_app.py).

``EVIL`` is a host that must never be linked, loaded or requested: every payload that could
make a link or an image points there.
"""
from __future__ import annotations

EVIL = "evil.invalid"

PAYLOADS = {
    "link": f"[Session expired - sign in again](http://{EVIL}/login)",
    "image": f"![pixel](http://{EVIL}/pixel.png)",
    "html": f"<img src=http://{EVIL}/h.png onerror=alert(1)><a href=http://{EVIL}/a>click</a><b>bold</b>"
            "<script>alert(2)</script>",
    "heading": "# Heading one\n## Heading two",
    "emphasis": "*em* **strong** _under_ ~~strike~~",
    "code fence": "```\ncode block\n```",
    "autolinks": f"http://{EVIL}/x www.{EVIL} mail@{EVIL} <http://{EVIL}/angle>",
    "streamlit markup": ":red[red] :material/home: :smile: $x^2$ :blue-background[b]",
    "table": "| a | b |\n|---|---|\n| 1 | 2 |",
    "list and quote": "1. first\n- item\n> quoted",
    "entities": "&lt;b&gt; &amp; &#x41; &copy;",
    "control characters": "tab\there nul\x00 bell\x07 newline\nreturn\r end",
    "right-to-left": "abc\u202edcba\u202c \u2066iso\u2069 zero\u200bwidth",
    "leading spaces": "        indented code?",
    "very long": "long " * 20_000,
}


def short_payloads(limit: int) -> dict[str, str]:
    """The payloads that fit where names are bounded (class names: 200 characters)."""
    return {name: text for name, text in PAYLOADS.items() if len(text) <= limit}


# ---- in a real browser ---------------------------------------------------------------------------
# Elements markdown or HTML payloads would make; none may appear where the app shows text it did not
# write (Streamlit's markdown containers, the attention view's readout and point statistics).
FOREIGN_TAGS = ["a", "img", "h1", "h2", "h3", "h4", "h5", "h6", "em", "i", "del", "s", "pre", "table",
                "blockquote", "ol", "ul", "li", "hr", "script", "iframe", "object", "embed", "math", "svg",
                "input", "video", "audio", "style", "link", "form"]
AUDIT_JS = """([foreign, origin]) => {
  const all = [];                          // every element, through the shadow roots (the view has one)
  const walk = (root) => { for (const el of root.querySelectorAll('*')) { all.push(el); if (el.shadowRoot) walk(el.shadowRoot); } };
  walk(document);
  const describe = (el) => el.outerHTML.slice(0, 160);
  const texts = all.filter(el => el.matches("[data-testid='stMarkdownContainer'], #readout, #pinned .stats, "
                                           + "[data-testid='stCaptionContainer'], #map-title, #bar-unit"));
  const bad = [];
  for (const box of texts) {
    for (const el of box.querySelectorAll(foreign.join(','))) {
      if (el.closest("[data-testid='stHeading'], [data-testid='stTooltipIcon']")) continue;   // the app's titles, help
      bad.push('foreign ' + describe(el));
    }
    if (box.querySelector('.katex, [style*=color]')) bad.push('styled ' + describe(box));
  }
  for (const el of all) {                  // anything that loads or links: from this server only
    for (const name of ['href', 'src', 'srcset', 'action', 'poster', 'data', 'formaction']) {
      const value = el.getAttribute(name);
      if (!value || value.startsWith('#') || value.startsWith('data:') || value.startsWith('blob:')
          || value.startsWith('about:')) continue;
      let url;
      try { url = new URL(value, document.baseURI); } catch (e) { bad.push('bad url ' + describe(el)); continue; }
      if (url.origin !== origin) bad.push('leaves ' + describe(el));
    }
  }
  return {bad, texts: texts.map(el => el.innerText.replaceAll('\\u2060', ''))};
}"""


def normalised(text: str) -> str:
    """Whitespace as the browser renders it (runs collapsed); word joiners dropped."""
    return " ".join(text.replace("\u2060", "").split())


def audit(page, origin: str, expected: list[str]) -> list[str]:
    """Problems on ``page``: foreign elements in text the app shows, links or sources that leave
    ``origin``, and any ``expected`` text (as ``plain`` shows it) that is not shown literally."""
    found = page.evaluate(AUDIT_JS, [FOREIGN_TAGS, origin])
    shown = [normalised(t) for t in found["texts"]]
    missing = [text[:80] for text in expected if not any(normalised(text) in s for s in shown)]
    return found["bad"] + [f"not shown literally: {text!r}" for text in missing]
