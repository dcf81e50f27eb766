"""The rules for outside text (``danet_app.literal``): every payload of ``helpers_markup`` comes
back from markdown as its visible self, with nothing left that markdown, GFM's autolinks or
Streamlit's extensions could act on. The page itself is checked in a real browser in
test_hostile_app.py; this is the fast, exhaustive part.
"""
from __future__ import annotations

import re
import unicodedata

import pytest
from helpers_app import rendered
from helpers_markup import PAYLOADS

from danet_app.literal import ECHO_LIMIT, capped, code, file_stem, md, plain, visible

AUTOLINK = re.compile(r"(?i)(https?|ftp)://|www\.|[\w.+-]@[\w-]")    # what GFM links in plain text


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_markdown_escape_renders_back_to_the_visible_text(name):
    text = PAYLOADS[name]
    escaped = md(text)
    assert rendered(escaped) == plain(text)
    # every ASCII punctuation character is escaped: a backslash precedes each one
    stripped = escaped.replace("&#32;", "")
    index = 0
    while index < len(stripped):
        char = stripped[index]
        if char == "\\":
            assert index + 1 < len(stripped), "a trailing lone backslash"
            index += 2
            continue
        assert not re.match(r"[!-/:-@\[-`{-~]", char), (name, char, stripped[max(0, index - 20):index + 20])
        index += 1
    # GFM finds autolinks in the text after escapes are resolved: none may be left there
    assert not AUTOLINK.search(re.sub(r"\\(.)", r"\1", stripped)), name
    assert "\n" not in escaped and not escaped.startswith(" ")


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_commonmark_renders_the_escaped_text_as_one_plain_paragraph(name):
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).render(md(PAYLOADS[name]))
    tags = set(re.findall(r"<\s*([a-zA-Z0-9]+)", html))
    assert tags == {"p"}, (name, html[:300])


def test_control_and_format_characters_are_shown_as_escapes():
    shown = visible("a\u202eb\u2066c\u200bd\x00e\nf\tg\ud800h\u2028i\u00adj\U000e0041k")
    assert shown == "a\\u202eb\\u2066c\\u200bd\\x00e\\nf\\tg\\ud800h\\u2028i\\xadj\\U000e0041k"
    assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in shown)
    assert visible("👩\u200d💻 ok") == "👩\u200d💻 ok"          # the emoji joiner stays
    shown.encode("utf-8")                                        # a lone surrogate can no longer fail encoding


def test_long_strings_are_cut_with_their_length():
    text = "x" * 5_000_000
    assert capped(text) == "x" * ECHO_LIMIT + "… (5,000,000 characters)"
    assert len(md(text)) < ECHO_LIMIT * 3 and "5,000,000 characters" in rendered(md(text))
    assert plain("short") == "short" and capped("y" * ECHO_LIMIT) == "y" * ECHO_LIMIT


@pytest.mark.parametrize("text", ["name.png", "a`b", "``x``", "`", " ", "", " a ", "a [x](http://y) *z*"])
def test_code_spans_hold_any_text(text):
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).render(code(text))
    assert re.fullmatch(r"<p><code>.*</code></p>\n", html, re.DOTALL), html
    inner = re.search(r"<code>(.*)</code>", html, re.DOTALL).group(1)
    unescaped_html = inner.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    assert unescaped_html == (plain(text) or " ")


@pytest.mark.parametrize("name, stem", [("photo.png", "photo"), ("../../etc/passwd.png", "etc_passwd"),
                                        ("a\u202egnp.exe.png", "a_gnp.exe"), ('x"; rm -rf\n.jpg', "x_rm_-rf"),
                                        (".png", "png"), ("", "image"), ("…", "image")])
def test_download_names_are_safe(name, stem):
    assert file_stem(name) == stem
    assert re.fullmatch(r"[0-9A-Za-z._-]+", file_stem(name))
