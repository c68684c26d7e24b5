"""The language of the synthetic dataset: meanings, their wording, parsing and resolution.

An expression's meaning is a :class:`Meaning`: a description of the target
(shape, optional colour and size) plus, for position expressions, a region or
superlative and, for relations, a relation to an anchor described by its
attributes. :func:`resolve` evaluates a meaning against a scene and returns
the objects it *firmly* selects, or ``None`` when some object sits so close to
a boundary (half of the image, a diagonal, a near tie) that a person could read it
either way; an expression is only used when it resolves to exactly one object.

Grammar (every phrase starts with ``the``)::

    desc      := [size] [colour] shape
    attribute := "the" desc
    position  := "the" desc region | "the" superlative desc
    region    := "on the left" | "on the right" | "at the top" | "at the bottom"
               | "in the" ("top" | "bottom") ("left" | "right")
    relation  := "the" desc ("left of" | "right of" | "above" | "below") "the" desc
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vgkit.errors import VgkitError

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SIZES = ("small", "large")
REGIONS = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "top left": "in the top left", "top right": "in the top right",
    "bottom left": "in the bottom left", "bottom right": "in the bottom right",
}
SUPERLATIVES = ("leftmost", "rightmost", "topmost", "bottommost")
RELATIONS = ("left of", "right of", "above", "below")
TYPES = ("attribute", "position", "relation")
# Boundary band, as a fraction of the image's shorter side: objects this close to
# the middle line, or ties this close, are ambiguous rather than in or out.
MARGIN = 0.05
# Superlatives need a clearer winner: a small lead in centre position is easy to misjudge.
SUPERLATIVE_GAP = 0.1
# A relation holds when the offset points mostly along its axis; between these
# ratios of across/along offset the direction is diagonal and hence ambiguous.
DIAGONAL_YES, DIAGONAL_NO = 0.75, 1.33
VOCABULARY = tuple(sorted(
    {"the", *SHAPES, *COLOURS, *SIZES, *SUPERLATIVES}
    | {w for p in REGIONS.values() for w in p.split()}
    | {w for r in RELATIONS for w in r.split()}))


@dataclass(frozen=True)
class SceneObject:
    """One drawn object as the language sees it: attributes and a tight box."""

    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]

    @property
    def cx(self) -> float:
        """Horizontal centre of the box."""
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        """Vertical centre of the box."""
        return (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class Desc:
    """A noun phrase: a shape with an optional size and colour."""

    shape: str
    colour: str | None = None
    size: str | None = None

    def words(self) -> list[str]:
        """The words of this description in phrase order."""
        return [w for w in (self.size, self.colour, self.shape) if w]

    def matches(self, o: SceneObject) -> bool:
        """Whether `o` fits this description."""
        return (o.shape == self.shape and self.colour in (None, o.colour)
                and self.size in (None, o.size))


@dataclass(frozen=True)
class Meaning:
    """What an expression means: a kind, the target's description and its qualifier."""

    kind: str  # one of TYPES
    desc: Desc
    where: str = ""  # a REGIONS key, a SUPERLATIVES word or a RELATIONS phrase
    anchor: Desc | None = None  # relations only

    def phrase(self) -> str:
        """The English wording of this meaning."""
        d = " ".join(self.desc.words())
        if self.kind == "attribute":
            return f"the {d}"
        if self.kind == "position":
            return f"the {self.where} {d}" if self.where in SUPERLATIVES else f"the {d} {REGIONS[self.where]}"
        assert self.anchor is not None
        return f"the {d} {self.where} the {' '.join(self.anchor.words())}"


def _parse_desc(words: list[str], i: int, phrase: str) -> tuple[Desc, int]:
    size = colour = None
    if i < len(words) and words[i] in SIZES:
        size, i = words[i], i + 1
    if i < len(words) and words[i] in COLOURS:
        colour, i = words[i], i + 1
    if i >= len(words) or words[i] not in SHAPES:
        raise VgkitError(f"synthetic phrase {phrase!r}: expected a shape at word {i + 1}")
    return Desc(words[i], colour, size), i + 1


def parse(phrase: str) -> Meaning:
    """The meaning of a phrase of the grammar above (a VgkitError for anything else)."""
    words = phrase.split()
    if not words or words[0] != "the":
        raise VgkitError(f"synthetic phrase {phrase!r}: must start with 'the'")
    sup = words[1] if len(words) > 1 and words[1] in SUPERLATIVES else ""
    desc, i = _parse_desc(words, 2 if sup else 1, phrase)
    rest = " ".join(words[i:])
    if sup and not rest:
        return Meaning("position", desc, sup)
    if not sup and not rest:
        return Meaning("attribute", desc)
    region = next((k for k, v in REGIONS.items() if v == rest), None)
    if not sup and region:
        return Meaning("position", desc, region)
    rel = next((r for r in RELATIONS if rest.startswith(r + " the ")), None)
    if not sup and rel:
        anchor, j = _parse_desc(words, i + len(rel.split()) + 1, phrase)
        if j == len(words):
            return Meaning("relation", desc, rel, anchor)
    raise VgkitError(f"synthetic phrase {phrase!r}: cannot parse {rest!r}")


def _tri(yes: bool, no: bool) -> bool | None:
    return True if yes else (False if no else None)


def _in_region(o: SceneObject, region: str, w: float, h: float, m: float) -> bool | None:
    parts = []
    for side in region.split():
        # Signed distance into the named half: positive means inside it.
        d = {"left": w / 2 - o.cx, "right": o.cx - w / 2,
             "top": h / 2 - o.cy, "bottom": o.cy - h / 2}[side]
        parts.append(_tri(d > m, d < -m))
    if False in parts:
        return False
    return None if None in parts else True


def _related(t: SceneObject, a: SceneObject, rel: str, m: float) -> bool | None:
    dx, dy = t.cx - a.cx, t.cy - a.cy
    along, across = {"left of": (-dx, dy), "right of": (dx, dy),
                     "above": (-dy, dx), "below": (dy, dx)}[rel]
    across = abs(across)
    return _tri(along > m and across <= DIAGONAL_YES * along,
                along <= 0 or across >= DIAGONAL_NO * along)


def _superlative(cands: list[int], objects: list[SceneObject], where: str, m: float) -> list[int] | None:
    sign, axis = {"leftmost": (1, "cx"), "rightmost": (-1, "cx"),
                  "topmost": (1, "cy"), "bottommost": (-1, "cy")}[where]
    keys = sorted((sign * getattr(objects[i], axis), i) for i in cands)
    if len(keys) > 1 and keys[1][0] - keys[0][0] < m:
        return None  # a near tie: either could be "the leftmost"
    return [i for _, i in keys[:1]]


def _verdicts(kind: str, where: str, anchor: int | None, objects: list[SceneObject],
              image_size: tuple[int, int]) -> list[bool | None]:
    # Whether each object satisfies a region or relation: independent of the
    # description, so candidates() computes it once per qualifier.
    w, h = image_size
    m = MARGIN * min(w, h)
    if kind == "position":
        return [_in_region(o, where, w, h, m) for o in objects]
    assert anchor is not None
    return [False if i == anchor else _related(o, objects[anchor], where, m)
            for i, o in enumerate(objects)]


def _select(cands: list[int], verdicts: list[bool | None]) -> list[int] | None:
    vs = [verdicts[i] for i in cands]
    return None if None in vs else [i for i, v in zip(cands, vs, strict=True) if v]


def resolve(meaning: Meaning, objects: list[SceneObject], image_size: tuple[int, int]) -> list[int] | None:
    """Indices of the objects `meaning` firmly selects, or None when it is borderline."""
    cands = [i for i, o in enumerate(objects) if meaning.desc.matches(o)]
    if meaning.kind == "attribute":
        return cands
    if meaning.kind == "position" and meaning.where in SUPERLATIVES:
        return _superlative(cands, objects, meaning.where, SUPERLATIVE_GAP * min(image_size))
    anchor = None
    if meaning.kind == "relation" and meaning.anchor is not None:
        anchors = resolve(Meaning("attribute", meaning.anchor), objects, image_size)
        if anchors is None or len(anchors) != 1:
            return None
        anchor = anchors[0]
    elif meaning.kind != "position":
        raise VgkitError(f"unknown synthetic meaning kind {meaning.kind!r}")
    return _select(cands, _verdicts(meaning.kind, meaning.where, anchor, objects, image_size))


@dataclass(frozen=True)
class Candidate:
    """A unique expression for a target; `informative` when its qualifier is needed."""

    meaning: Meaning
    informative: bool

    @property
    def n_words(self) -> int:
        """Length of the phrase in words."""
        return len(self.meaning.phrase().split())

    @property
    def family(self) -> str:
        """Superlatives and regions compete separately, so long region phrases still get picked."""
        return "superlative" if self.meaning.where in SUPERLATIVES else self.meaning.kind


def _descs(o: SceneObject) -> list[Desc]:
    # Shortest first, so the first unique one is the minimal description.
    return [Desc(o.shape), Desc(o.shape, colour=o.colour), Desc(o.shape, size=o.size),
            Desc(o.shape, o.colour, o.size)]


def candidates(objects: list[SceneObject], target: int,
               image_size: tuple[int, int]) -> dict[str, list[Candidate]]:
    """All unique, minimal expressions for `objects[target]`, by expression type."""
    descs = _descs(objects[target])
    matching = {d: [i for i, o in enumerate(objects) if d.matches(o)] for d in descs}
    out: dict[str, list[Candidate]] = {t: [] for t in TYPES}
    out["attribute"] = [Candidate(Meaning("attribute", d), True) for d in descs if matching[d] == [target]]
    gap = SUPERLATIVE_GAP * min(image_size)
    quals: list[tuple[str, str, int | None]] = [("position", w, None) for w in (*REGIONS, *SUPERLATIVES)]
    quals += [("relation", r, j) for j in range(len(objects)) if j != target for r in RELATIONS]
    anchor_desc = {}
    for kind, where, anchor in quals:
        if anchor is not None and anchor not in anchor_desc:
            anchor_desc[anchor] = next((d for d in _descs(objects[anchor])
                                        if unique_for(d, objects, anchor)), None)
        if anchor is not None and anchor_desc[anchor] is None:
            continue  # an anchor needs a unique attribute description of its own
        verdicts = None if where in SUPERLATIVES else _verdicts(kind, where, anchor, objects, image_size)
        best = None  # a qualifier keeps only its shortest sufficient descriptions
        for d in descs:
            n = len(d.words())
            if best is not None and n > best:
                break
            if where in SUPERLATIVES:
                if len(matching[d]) < 2:
                    continue  # "the leftmost X" needs more than one X
                hit = _superlative(matching[d], objects, where, gap)
            else:
                assert verdicts is not None
                hit = _select(matching[d], verdicts)
            if hit == [target]:
                best = n
                mn = Meaning(kind, d, where, anchor_desc.get(anchor) if anchor is not None else None)
                out[kind].append(Candidate(mn, len(matching[d]) > 1))
    return out


def unique_for(d: Desc, objects: list[SceneObject], index: int) -> bool:
    """Whether description `d` picks out exactly `objects[index]`."""
    return [i for i, o in enumerate(objects) if d.matches(o)] == [index]


def choose(cands: dict[str, list[Candidate]], k: int, rng: random.Random) -> list[Meaning]:
    """Up to `k` distinct meanings, mixing types, preferring short and informative ones."""
    types = [t for t in TYPES if cands[t]]
    rng.shuffle(types)
    picked: list[Meaning] = []
    for j in range(k * 2):  # extra rounds let a type with several options fill in
        if len(picked) == k or not types:
            break
        pool = [c for c in cands[types[j % len(types)]] if c.meaning not in picked]
        if not pool:
            continue
        informative = [c for c in pool if c.informative]
        if informative and rng.random() < 0.85:
            pool = informative
        family = rng.choice(sorted({c.family for c in pool}))
        pool = [c for c in pool if c.family == family]
        shortest = min(c.n_words for c in pool)
        pool = [c for c in pool if c.n_words <= shortest + 1]
        weights = [3 if c.n_words == shortest else 1 for c in pool]
        picked.append(rng.choices(pool, weights)[0].meaning)
    return picked
