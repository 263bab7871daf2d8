"""Prompt permutations: `a {red, blue} bird {--ar 1:1, --ar 16:9}` is four prompts.

Braces hold options separated by commas; each option may hold braces of its own. Every
combination is made, in order (the leftmost brace changes slowest), with spaces around each
option trimmed. `\\{` and `\\}` are literal braces anywhere, `\\,` a literal comma inside
braces; any other backslash is kept as written. A prompt without braces is itself.

`parse` checks a prompt (balanced braces, at most MAX_DEPTH levels deep, at most
MAX_COMBINATIONS combinations, none of them blank) without building the list, and says how
many prompts it makes; `Permutations.prompts()` builds them. Pure functions, no I/O.
"""

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from control_plane.errors import InvalidRequest

MAX_COMBINATIONS = 1_000  # prompts one prompt may expand into
MAX_DEPTH = 20  # braces within braces
ESCAPABLE = {"{", "}"}  # after a backslash, anywhere
ESCAPABLE_IN_BRACES = {"{", "}", ","}


@dataclass(frozen=True)
class _Choice:
    """`{a, b}`: one of its options, each a sequence of text and choices."""

    options: tuple["_Sequence", ...]


_Sequence = tuple[str | _Choice, ...]


@dataclass(frozen=True)
class Permutations:
    """A checked prompt: `count` prompts, made by `prompts()`."""

    source: str
    count: int
    _pieces: _Sequence

    def prompts(self) -> list[str]:
        return [prompt.strip() for prompt in _expand(self._pieces)]


def expand(prompt: str) -> list[str]:
    """Every prompt `prompt` stands for, in order (InvalidRequest if it is not usable)."""
    return parse(prompt).prompts()


def parse(prompt: str) -> Permutations:
    """`prompt` checked and counted, not yet expanded; InvalidRequest says what is wrong."""
    pieces = _parse(prompt)
    count = _count(pieces)
    if count > MAX_COMBINATIONS:
        raise InvalidRequest(
            f"prompt permutations: the braces make {_number(count)} prompts; "
            f"the limit is {MAX_COMBINATIONS:,} per prompt"
        )
    if _can_be_blank(pieces):
        raise InvalidRequest(
            "prompt permutations: a combination of the options makes an empty prompt"
        )
    return Permutations(prompt, count, pieces)


@dataclass
class _Open:
    """A brace being read: its finished options and the one being read."""

    at: int  # position of its `{`
    options: list[_Sequence]
    current: list[str | _Choice]


def _parse(prompt: str) -> _Sequence:
    """Read braces with an explicit stack (no recursion, whatever the nesting)."""
    top: list[str | _Choice] = []
    stack: list[_Open] = []
    text: list[str] = []

    def pieces() -> list[str | _Choice]:
        return stack[-1].current if stack else top

    def flush() -> None:
        if text:
            pieces().append("".join(text))
            text.clear()

    position = 0
    while position < len(prompt):
        char = prompt[position]
        escapable = ESCAPABLE_IN_BRACES if stack else ESCAPABLE
        following = prompt[position + 1 : position + 2]
        if char == "\\" and following in escapable:
            text.append(following)
            position += 2
            continue
        if char == "{":
            flush()
            if len(stack) == MAX_DEPTH:
                raise InvalidRequest(
                    f"prompt permutations: braces nested more than {MAX_DEPTH} deep "
                    f"at position {position + 1}"
                )
            stack.append(_Open(position, [], []))
        elif char == "," and stack:
            flush()
            stack[-1].options.append(_trimmed(stack[-1].current))
            stack[-1].current = []
        elif char == "}":
            if not stack:
                raise InvalidRequest(
                    f"prompt permutations: unbalanced braces: the '}}' at position "
                    f"{position + 1} closes no '{{' (write \\}} for a literal brace)"
                )
            flush()
            closed = stack.pop()
            closed.options.append(_trimmed(closed.current))
            pieces().append(_Choice(tuple(closed.options)))
        else:
            text.append(char)
        position += 1
    if stack:
        raise InvalidRequest(
            f"prompt permutations: unbalanced braces: the '{{' at position {stack[-1].at + 1} "
            "is never closed (write \\{ for a literal brace)"
        )
    flush()
    return tuple(top)


def _trimmed(pieces: list[str | _Choice]) -> _Sequence:
    """An option without the spaces around it."""
    trimmed = list(pieces)
    if trimmed and isinstance(trimmed[0], str):
        trimmed[0] = trimmed[0].lstrip()
    if trimmed and isinstance(trimmed[-1], str):
        trimmed[-1] = trimmed[-1].rstrip()
    return tuple(piece for piece in trimmed if piece != "")


def _count(pieces: _Sequence) -> int:
    total = 1
    for piece in pieces:
        if isinstance(piece, _Choice):
            total *= sum(_count(option) for option in piece.options)
    return total


def _can_be_blank(pieces: _Sequence) -> bool:
    return all(
        any(_can_be_blank(option) for option in piece.options)
        if isinstance(piece, _Choice)
        else not piece.strip()
        for piece in pieces
    )


def _expand(pieces: _Sequence) -> Iterator[str]:
    alternatives = [
        [piece] if isinstance(piece, str) else list(_options(piece)) for piece in pieces
    ]
    for combination in itertools.product(*alternatives):
        yield "".join(combination)


def _options(choice: _Choice) -> Iterator[str]:
    for option in choice.options:
        yield from _expand(option)


def _number(count: int) -> str:
    """`count` for a message: in full up to 10^15, else its order of magnitude (an integer
    of thousands of digits cannot even be turned into a string by default)."""
    if count < 10**15:
        return f"{count:,}"
    return f"about 10^{int(count.bit_length() * 0.30103)}"
