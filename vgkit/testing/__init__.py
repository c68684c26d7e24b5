"""Conformance checks for components and datasets, for any plugin's own test suite.

``check_component(kind, name)`` builds a registered component and checks that it
honours its kind's contract (:mod:`vgkit.interfaces`): shapes, dtypes,
finiteness, determinism under a seed, padding invariance for text encoders, the
frozen-backbone rules, ``out_spec`` honesty for attention, ``init_output_bias``
for heads, and gradient flow through a tiny composed model whose other parts are
stubs. ``check_dataset(name, root)`` builds a dataset and checks its index.
A failed check raises ``AssertionError`` naming what is wrong; a loss that cannot
be built on any attention chain raises ``unittest.SkipTest`` (pytest skips it)::

    from vgkit.testing import check_component

    def test_my_attention_conforms():
        check_component("attention", "my-attention")

vgkit's own ``tests/test_conformance.py`` runs these over every registered component.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vgkit.errors import VgkitError
from vgkit.registry import Registry
from vgkit.testing import _parts
from vgkit.testing._checks import CHECKS
from vgkit.testing._parts import KINDS, StubBackbone, StubHead, StubText, _check

__all__ = ["KINDS", "StubBackbone", "StubHead", "StubText", "check_component", "check_dataset"]


@contextmanager
def _using(reg: Registry | None, options: dict[tuple[str, str], dict[str, Any]]) -> Iterator[None]:
    saved = _parts.state.registry, _parts.state.options
    _parts.state.registry, _parts.state.options = reg, options
    try:
        yield
    finally:
        _parts.state.registry, _parts.state.options = saved


def check_component(kind: str, name: str, *, registry: Registry | None = None,
                    options: dict[str, Any] | None = None,
                    other_options: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
    """Check that component `name` of `kind` honours its contract; AssertionError if not.

    `options` are given to the component (e.g. a local model directory it cannot
    build without); `other_options` to other components the check builds, by
    (kind, name). `registry` defaults to the installed plugins'.
    """
    if kind not in CHECKS:
        raise VgkitError(f"check_component: kind {kind!r} has no conformance check; "
                         f"kinds: {', '.join(CHECKS)} (datasets: check_dataset)")
    opts = dict(other_options or {})
    if options:
        opts[(kind, name)] = options
    with _using(registry, opts):
        CHECKS[kind](name)


def check_dataset(name: str, root: str | Path, *, registry: Registry | None = None,
                  options: dict[str, Any] | None = None) -> None:
    """Check that dataset `name` builds at `root` into a valid index whose images exist."""
    from vgkit.data.index import DatasetIndex, Record
    from vgkit.data.validate import check_index, image_file

    reg = registry
    if reg is None:
        from vgkit.plugins import get_registry

        reg = get_registry()
    index = reg.build("dataset", name, options or {}, root=Path(root))
    _check(isinstance(index, DatasetIndex), f"dataset {name} built a {type(index).__name__}, "
                                            "not a DatasetIndex")
    _check(len(index) > 0, f"dataset {name} at {root} has no records")
    _check(all(isinstance(r, Record) for r in index), f"dataset {name}: not every item is a Record")
    report = check_index(index)  # also refuses an image path that leaves the root
    _check(report.ok, f"dataset {name}: invalid records: {report.summary()}")
    missing = [r.image_path for r in index if not image_file(Path(root), r.image_path).is_file()]
    _check(not missing, f"dataset {name}: {len(missing)} records name missing images, e.g. "
                        f"{missing[:3]}")
    again = reg.build("dataset", name, options or {}, root=Path(root))
    _check(again.digest() == index.digest(), f"dataset {name}: two builds give other records")
