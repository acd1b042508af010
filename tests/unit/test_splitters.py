"""Streaming splitters: examples per splitter, and chunking invariance (hypothesis)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto_workers.lm.splitters import EMITS, SplitterError, make_splitter


def run(emit: str, chunks: list[str], **options) -> tuple[list, str | None]:
    """Items of a whole stream, and the error that ended it (items before it kept)."""
    sp = make_splitter(emit, **options)
    items: list = []
    try:
        for chunk in chunks:
            items += sp.feed(chunk)
        items += sp.finish()
    except SplitterError as err:
        return items + err.items, type(err).__name__
    return items, None


def split(emit: str, text: str, **options) -> list:
    items, err = run(emit, [text], **options)
    assert err is None
    return items


def cut(text: str, points: list[int]) -> list[str]:
    bounds = [0, *sorted(set(points)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@st.composite
def chunked(draw, texts):
    text = draw(texts)
    points = draw(st.lists(st.integers(0, len(text)), max_size=12))
    return text, cut(text, points)


SENTENCE_BITS = st.sampled_from(
    ["Dr.", "e.g.", "U.S.", "J.", "3.14", "1.", "etc.", "...", "…", "?", "!", ".", ".",
     " ", " ", "  ", "\n", "\n\n", '"', "'", ")", "(", "“", "”",
     "The", "it", "Hello", "world", "42", "a", "Why"]
)
SENTENCE_TEXT = st.one_of(st.lists(SENTENCE_BITS, max_size=40).map("".join), st.text(max_size=80))
LINE_TEXT = st.one_of(
    st.lists(
        st.sampled_from(["1.", "2)", "-", "*", "•", " ", "\n", "\r\n", "item", "x", "3.5"]),
        max_size=30,
    ).map("".join),
    st.text(max_size=60),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab[]{},:"\\ \n\u00e9'), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def json_streams(draw):
    items = draw(st.lists(JSON_VALUES, max_size=6))
    indent = draw(st.sampled_from([None, 2]))
    preamble = draw(
        st.sampled_from(["", "Here are the claims:\n", "```json\n", "Sure! [see below]\n"])
    )
    tail = draw(st.sampled_from(["", "\n```", "\nDone [1]."]))
    body = json.dumps(items, indent=indent, ensure_ascii=draw(st.booleans()))
    return items, preamble + body + tail


# ------------------------------------------------------------------- invariance


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["sentences", "lines", "json-items"]), st.data())
def test_items_do_not_depend_on_chunking(emit, data):
    texts = {
        "sentences": SENTENCE_TEXT,
        "lines": LINE_TEXT,
        "json-items": json_streams().map(lambda x: x[1]),
    }
    text, chunks = data.draw(chunked(texts[emit]))
    assert run(emit, chunks) == run(emit, [text])


@settings(max_examples=200, deadline=None)
@given(chunked(st.text(alphabet=st.sampled_from('[]{}",:\\ ab1-tn'), max_size=40)))
def test_json_outcome_does_not_depend_on_chunking_even_when_malformed(case):
    text, chunks = case
    assert run("json-items", chunks) == run("json-items", [text])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_json_items_are_the_array(data):
    items, text = data.draw(json_streams())
    _, chunks = data.draw(chunked(st.just(text)))
    assert run("json-items", chunks) == (items, None)


@given(chunked(st.text(max_size=50)))
def test_tokens_pass_chunks_through(case):
    text, chunks = case
    items, _ = run("tokens", chunks)
    assert items == [c for c in chunks if c]
    assert "".join(items) == text


# ------------------------------------------------------------------- sentences


def test_sentences_basic():
    text = "Hello world. How are you? I am fine! Thanks."
    assert split("sentences", text) == ["Hello world.", "How are you?", "I am fine!", "Thanks."]


def test_sentences_abbreviations_decimals_initials():
    text = (
        "Dr. Smith earned 3.14 million in the U.S. Army, e.g. from grants. "
        "She met J. R. Tolkien. Mr. Brown agreed."
    )
    assert split("sentences", text) == [
        "Dr. Smith earned 3.14 million in the U.S. Army, e.g. from grants.",
        "She met J. R. Tolkien.",
        "Mr. Brown agreed.",
    ]


def test_sentences_ellipses_quotes_brackets():
    text = (
        'Wait... What happened? He said "Stop." Then (quietly) he left.) '
        '"Why?" she asked… Nobody knew.'
    )
    assert split("sentences", text) == [
        "Wait...",
        "What happened?",
        'He said "Stop."',
        "Then (quietly) he left.)",
        '"Why?" she asked…',
        "Nobody knew.",
    ]


def test_sentences_lowercase_or_no_space_does_not_end():
    assert split("sentences", "It costs 5.50 dollars. not a new one.Really") == [
        "It costs 5.50 dollars. not a new one.Really"
    ]


def test_sentences_numbered_lines_and_paragraphs():
    text = "Steps:\n1. Mix it. 2. Bake it.\n\nlowercase paragraph"
    assert split("sentences", text) == ["Steps:\n1. Mix it.", "2. Bake it.", "lowercase paragraph"]


def test_sentences_wait_until_the_end_is_known():
    sp = make_splitter("sentences")
    assert sp.feed("The first one.") == []
    assert sp.feed(" ") == []
    assert sp.feed("The") == ["The first one."]
    assert sp.feed(" second ends here.") == []
    assert sp.finish() == ["The second ends here."]


# ------------------------------------------------------------------------ lines


def test_lines_strip_markers_and_skip_blanks():
    text = (
        "Claims:\n1. First claim\n2) Second claim\n\n- dash\n* star\n• bullet\n  \n"
        "3.5 stays\n-5 stays\nlast"
    )
    assert split("lines", text) == [
        "Claims:", "First claim", "Second claim", "dash", "star", "bullet",
        "3.5 stays", "-5 stays", "last",
    ]


def test_lines_emit_at_newline():
    sp = make_splitter("lines")
    assert sp.feed("1. one") == []
    assert sp.feed("\n2. tw") == ["one"]
    assert sp.finish() == ["tw"]


# ------------------------------------------------------------------- json-items


def test_json_items_emitted_as_they_close():
    sp = make_splitter("json-items")
    assert sp.feed('Here are the claims:\n[{"claim": "a [b]", "n": 1}, "x\\"y]"') == [
        {"claim": "a [b]", "n": 1}, 'x"y]',
    ]
    assert sp.feed(", 4") == []              # a number may still grow
    assert sp.feed("2, [1, 2]") == [42, [1, 2]]
    assert sp.feed("]\nThat is all.") == []
    assert sp.finish() == []


def test_json_items_skip_brackets_in_preamble_and_allow_trailing_comma():
    assert split("json-items", "Claims [in order]:\n[1, 2,]") == [1, 2]
    assert split("json-items", "[]") == []


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('["ok", {"a" 1}]', '{"a" 1}'),
        ("[1, tru]", "tru"),
        ('["a" "b"]', "missing ','"),
        ("[1,,2]", "empty item"),
        ('[{"a": 1}} ]', "'}'"),
    ],
)
def test_json_malformed_item_names_the_text(text, fragment):
    sp = make_splitter("json-items")
    with pytest.raises(SplitterError) as info:
        sp.feed(text)
        sp.finish()
    assert fragment in str(info.value)


def test_json_error_keeps_items_completed_before_it():
    sp = make_splitter("json-items")
    with pytest.raises(SplitterError) as info:
        sp.feed('[1, "two", {"bad" 3}]')
    assert info.value.items == [1, "two"]


def test_json_strict_finish():
    sp = make_splitter("json-items")
    assert sp.feed("I found no claims.") == []
    with pytest.raises(SplitterError, match="no JSON array"):
        sp.finish()
    sp = make_splitter("json-items")
    assert sp.feed('["a", "b') == ["a"]
    with pytest.raises(SplitterError, match="never closed"):
        sp.finish()
    assert split("json-items", '["a", 7', strict=False) == ["a", 7]
    assert split("json-items", '["a", "b', strict=False) == ["a"]


# ---------------------------------------------------------------- factory, speed


def test_factory():
    assert set(EMITS) == {"tokens", "sentences", "lines", "json-items"}
    with pytest.raises(ValueError, match="'paragraphs'"):
        make_splitter("paragraphs")


@pytest.mark.parametrize("emit", EMITS)
def test_feeding_is_linear(emit):
    if emit == "json-items":
        text = json.dumps([f"Claim number {i} is [probably] true." for i in range(4000)])
    elif emit == "lines":
        text = "".join(f"{i}. Line number {i} of the list\n" for i in range(4000))
    else:
        text = "".join(f"Sentence {i} says that Dr. Who paid 3.5 dollars. " for i in range(4000))
    sp = make_splitter(emit)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(text), 4):             # ~50k token-sized chunks
        n += len(sp.feed(text[i : i + 4]))
    n += len(sp.finish())
    assert time.perf_counter() - t0 < 2.0
    assert n == (len(range(0, len(text), 4)) if emit == "tokens" else 4000)
