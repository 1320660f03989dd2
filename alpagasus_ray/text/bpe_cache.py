"""Exact token ids of plain text, several times faster than the tokenizer's own encoder: each
pre-token (word) is BPE-encoded once per worker and reused.

Hugging Face's encoder does about 6,000 Alpaca rows/s on one core, most of it in its regex
pre-tokenizer and the per-call bookkeeping (offsets, masks) the prompt stage never reads.
Text is made of a few tens of thousands of distinct words, so here the text is split in
Python with the tokenizer's own pattern, and each word's ids come from the tokenizer's own BPE
model, once.

Exact by construction where it applies, and it applies narrowly:
- the pipelines reproduced here only: no normalizer or a Unicode one (the identity on ASCII);
  a pre-tokenizer that is byte-level, alone or after Split (isolated regex) and Digits steps;
  a BPE model without dropout. `from_tokenizer` returns None for anything else.
- printable-ASCII text only (plus tab, newline, carriage return), where Python's `regex` and
  the tokenizer's Oniguruma agree on letters, digits and whitespace. A segment with any other
  character is encoded by the tokenizer itself.
- added tokens (the chat template's specials) are cut out first, leftmost-longest, as the
  tokenizer does; one with strip or single-word rules turns the cache off.
And it is checked: built-in probe texts must encode exactly as the tokenizer does, else
`from_tokenizer` returns None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import chain, groupby
from typing import Any

import regex

# ByteLevel's own split (GPT-2's pattern), used when it runs with `use_regex`.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama 3's and Qwen 2's Split patterns.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
# Patterns in which no piece holds a space unless the space starts it or follows whitespace,
# and whose only look-ahead is from whitespace: so a space right after a printable non-space
# character always starts a piece, whatever comes after, and text can be cut there.
_CUT_SAFE = {GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, r"\p{N}", r"\p{N}+"}
_SPACE_CUT = re.compile(r"(?<=[!-~])(?= )")
_NOT_PLAIN = re.compile(r"[^\t\n\r\x20-\x7e]")
_NEVER = re.compile(r"(?!)")
# On printable ASCII, the only text split here, these Unicode classes are ASCII ones.
_ASCII_CLASSES = {"L": "A-Za-z", "N": "0-9"}
_UNICODE_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}  # each leaves ASCII as it is

_PROBES = [
    "Name a colour.\n\n### Input:\n\n\n### Response:\nBlue.\n</example>",
    "Sum:\n 2+2 = 4;  x3 -12.50e7\t\tTab\r\nCRLF   spaced    \n\n  ",
    "It's they're we've I'm you'll he'd IT'S DON'T 'quoted' \"double\" `tick`",
    "   leading and trailing   ",
    "(a) Unicode \u00fcber \u2713 \u6f22\u5b57 emoji \U0001f642 and back to ASCII",
    "1234567890 12 345 6789 a1b2c3 ### --- *** ___ ... !!! ??? <|im_end|>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    "x\x0bvertical\x0cform\x1cfile\x7fdel",
]


def _bytes_to_unicode() -> dict[int, str]:
    """ByteLevel's map from bytes to printable characters (GPT-2's `bytes_to_unicode`)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars = dict(zip(keep, keep, strict=True))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {b: chr(c) for b, c in chars.items()}


_BYTE_CHARS = _bytes_to_unicode()


def _ascii_pattern(pattern: str) -> str | None:
    """`pattern` for Python's faster `re`, with its \\p{L} and \\p{N} classes spelled in ASCII
    (exact on printable ASCII), or None where it uses anything else `re` lacks."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and pattern[i + 1 : i + 2] in ("p", "P"):
            m = re.match(r"\\p\{(\w+)\}", pattern[i:])
            if not m or m.group(1) not in _ASCII_CLASSES:
                return None
            cls = _ASCII_CLASSES[m.group(1)]
            out.append(cls if in_class else f"[{cls}]")
            i += m.end()
            continue
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            i += 1
            if pattern[i : i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i : i + 1] == "]":  # a literal "]" first in a class
                out.append("\\]")
                i += 1
            continue
        if c == "[":  # a nested class (set operations): `re` has none
            return None
        in_class = in_class and c != "]"
        out.append(c)
        i += 1
    return "".join(out)


def _compile(pattern: str) -> re.Pattern | regex.Pattern:
    ascii_pattern = _ascii_pattern(pattern)
    if ascii_pattern is not None:
        try:
            return re.compile(ascii_pattern)
        except re.error:
            pass
    return regex.compile(pattern)


def _splitters(pre: dict | None) -> tuple[list[re.Pattern | regex.Pattern], bool] | None:
    """The pre-tokenizer as isolating regex splits, and whether a space after a printable
    ASCII character always starts a new piece (see `_SPACE_CUT`); None where the
    pre-tokenizer is not one reproduced here. It must end in a byte-level step."""
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre]
    if not steps or not steps[-1] or steps[-1].get("type") != "ByteLevel":
        return None
    last = steps[-1]
    if last.get("add_prefix_space") or last.get("prepend_scheme") not in (None, "never"):
        return None
    patterns = []
    for step in steps[:-1]:
        kind = step.get("type")
        if kind == "Digits":
            patterns.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif (
            kind == "Split"
            and step.get("behavior") == "Isolated"
            and not step.get("invert")
            and "Regex" in (step.get("pattern") or {})
        ):
            patterns.append(step["pattern"]["Regex"])
        else:
            return None
    if last.get("use_regex", True):
        patterns.append(GPT2_PATTERN)
    cuts = all(p in _CUT_SAFE for p in patterns)
    return [_compile(p) for p in patterns], cuts


def _alternation(tokens: list[str]) -> re.Pattern:
    """Leftmost-longest match over `tokens`, as the tokenizer finds added tokens."""
    if not tokens:
        return _NEVER
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def _isolate(rx: re.Pattern | regex.Pattern, text: str) -> list[str]:
    """Split `text` into its matches of `rx` and the gaps between them, in order."""
    if not rx.groups:
        found = rx.findall(text)
        if sum(map(len, found)) == len(text):  # the pattern covers the text: no gaps
            return found
    out, pos = [], 0
    for m in rx.finditer(text):
        if m.start() > pos:
            out.append(text[pos : m.start()])
        if m.end() > m.start():
            out.append(m.group())
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


class CachedBPE:
    """`encode(text)` equals the tokenizer's `encode(text, add_special_tokens=False).ids`."""

    def __init__(
        self,
        backend: Any,
        splitters: list[re.Pattern | regex.Pattern],
        cuts: bool,
        added: list[dict],
        max_words: int,
    ):
        self.backend, self.splitters = backend, splitters
        self.words = _Words(backend.model, max_words)
        self.added_ids = {t["content"]: t["id"] for t in added}
        # The tokenizer cuts out raw-text tokens first, then normalized ones in what is left.
        self.raw = _alternation([t["content"] for t in added if not t.get("normalized")])
        self.normalized = _alternation([t["content"] for t in added if t.get("normalized")])
        # Other text is cut at spaces so that only the words around it go to the tokenizer;
        # an added token could span a cut if it were normalized or held a space.
        self.cuts = cuts and self.normalized is _NEVER and not any(" " in t for t in self.added_ids)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, max_words: int = 1 << 16) -> CachedBPE | None:
        """The cache for a fast tokenizer whose pipeline it reproduces exactly, else None."""
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # not a Hugging Face `tokenizers.Tokenizer`
            return None
        model, norm = spec.get("model") or {}, spec.get("normalizer")
        added = spec.get("added_tokens") or []
        split = _splitters(spec.get("pre_tokenizer"))
        if (
            split is None
            or getattr(backend, "encode_special_tokens", False)  # specials spelled as text
            or model.get("type") != "BPE"
            or model.get("dropout")
            or (norm is not None and norm.get("type") not in _UNICODE_NORMALIZERS)
            or any(t.get(k) for t in added for k in ("single_word", "lstrip", "rstrip"))
        ):
            return None
        cache = cls(backend, *split, added, max_words)
        probes = [*_PROBES, " | x".join(t["content"] for t in added)]
        reference = [e.ids for e in backend.encode_batch(probes, add_special_tokens=False)]
        if [cache.encode(p) for p in probes] != reference:
            return None
        cache.words.clear()  # the probes' words are no guide to the data's
        return cache

    def cut(self, text: str) -> int | None:
        """The first place where `text` can be cut so that the ids of the two parts are those
        of the whole, one after the other; None if there is none."""
        found = _SPACE_CUT.search(text) if self.cuts else None
        return found.start() if found else None

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        self._around(self.raw, text, self._segment, out)
        return out

    def _around(
        self, tokens: re.Pattern, text: str, gap: Callable[[str, list[int]], None], out: list[int]
    ) -> None:
        """Each added token's id where `tokens` finds one, and `gap` on the text between."""
        pos = 0
        for m in tokens.finditer(text):
            gap(text[pos : m.start()], out)
            out.append(self.added_ids[m.group()])
            pos = m.end()
        gap(text[pos:], out)

    def _segment(self, text: str, out: list[int]) -> None:
        """Ids of text with no raw-text added token in it, appended to `out`."""
        if not text:
            return
        if _NOT_PLAIN.search(text):
            self._other(text, out)
        else:
            self._around(self.normalized, text, self._words, out)

    def _other(self, text: str, out: list[int]) -> None:
        """Text with characters outside printable ASCII: the words around them are encoded
        by the tokenizer itself, the rest as usual."""
        parts = _SPACE_CUT.split(text) if self.cuts else [text]
        for other, group in groupby(parts, key=lambda part: bool(_NOT_PLAIN.search(part))):
            chunk = "".join(group)
            if other:
                out += self.backend.encode(chunk, add_special_tokens=False).ids
            else:
                self._words(chunk, out)

    def _words(self, text: str, out: list[int]) -> None:
        if not text:
            return
        first, *rest = self.splitters
        pieces = _isolate(first, text)
        for rx in rest:
            pieces = [w for p in pieces for w in _isolate(rx, p)]
        out.extend(chain.from_iterable(map(self.words.__getitem__, pieces)))


class _Words(dict):
    """Each word's ids, from the tokenizer's own BPE model the first time it is met; the
    first `size` words are kept."""

    def __init__(self, model: Any, size: int):
        super().__init__()
        self.model, self.size = model, size

    def __missing__(self, word: str) -> list[int]:
        ids = [t.id for t in self.model.tokenize("".join(_BYTE_CHARS[b] for b in word.encode()))]
        if len(self) < self.size:
            self[word] = ids
        return ids
