"""Pretrained weights from a local file, in the layouts users actually have.

A file is read without running code (``.safetensors``, or ``.pth``/``.pt``/``.bin``
with ``torch.load(weights_only=True)``), unwrapped (``state_dict``, ``model``,
``model_ema``...), and its names are mapped onto a target module:

* **timm** / **torchvision**: names already match (timm keeps torchvision's
  ``features.N`` for the models it ports); a ``features_only`` model's flattened
  ``features_28`` is found as ``features.28``.
* **lukemelas** EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv``...):
  renamed to timm's EfficientNet names, the flat block N matched to timm's N-th
  ``blocks.S.I`` (``_lukemelas_to_timm``).
* any of these saved inside a bigger model (``backbone.``, DDP's ``module.``, ...):
  the prefix under which most target tensors match is stripped.

Every target tensor must be found with its exact shape; what the file has beyond
that (a classifier, a head) is counted in the report, not loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vgkit.errors import VgkitError

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "module")
_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                  "_bn1": "bn2", "_fc": "classifier"}
# inside a block: with an expansion conv (inverted residual) and without (depthwise-separable)
_LUKEMELAS_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                     "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
                     "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}


@dataclass
class Match:
    """How a file's tensors map onto a module: the one-line report of a load."""

    path: Path
    layout: str  # timm/torchvision, lukemelas
    prefix: str  # stripped from the file's names ("" when none)
    total: int  # tensors in the file
    state: dict[str, Tensor] = field(repr=False)  # target name -> tensor, matched
    missing: list[str] = field(default_factory=list)  # target names not in the file
    bad_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    unused: int = 0  # file tensors that fit nothing in the target

    def summary(self) -> str:
        """E.g. ``layout lukemelas, prefix 'module.': 288 of 288 target tensors matched; ...``."""
        want = len(self.state) + len(self.missing) + len(self.bad_shapes)
        prefix = f", prefix {self.prefix!r}" if self.prefix else ""
        line = (f"layout {self.layout}{prefix}: {len(self.state)} of {want} "
                f"target tensors matched; {self.unused} of the file's {self.total} unused")
        if self.missing:
            line += f"; {len(self.missing)} missing (e.g. {_dotted(self.missing[0])})"
        if self.bad_shapes:
            name, got, need = self.bad_shapes[0]
            line += f"; {len(self.bad_shapes)} of the wrong shape (e.g. {name}: {got}, needs {need})"
        return line

    @property
    def ok(self) -> bool:
        """Every target tensor was found with its shape."""
        return not self.missing and not self.bad_shapes


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file, nothing in it executed; one-line errors naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise VgkitError(f"weights file not found: {p}")
    if p.suffix not in SUFFIXES:
        raise VgkitError(f"weights {p}: expected {', '.join(SUFFIXES)}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors come in many types
        raise VgkitError(f"{p}: not a loadable weights file ({type(exc).__name__}: "
                         f"{(str(exc).splitlines() or [''])[0][:200]})") from exc
    for _ in range(3):  # {"model": {"state_dict": ...}} nests
        if isinstance(state, Mapping) and not any(isinstance(v, Tensor) for v in state.values()):
            inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping):
        raise VgkitError(f"{p}: expected a state dict (names -> tensors), found "
                         f"{type(state).__name__}")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise VgkitError(f"{p}: holds no tensors (top-level keys: "
                         f"{', '.join(map(str, list(state)[:8])) or 'none'})")
    return tensors


def detect_layout(state: Mapping[str, Tensor]) -> str:
    """``lukemelas`` when the names are EfficientNet-PyTorch's, else ``timm/torchvision``."""
    if any(re.search(r"(^|\.)(_conv_stem|_blocks\.\d+\.)", k) for k in state):
        return "lukemelas"
    return "timm/torchvision"


def match_state(path: str | Path, state: Mapping[str, Tensor], target: torch.nn.Module) -> Match:
    """Map `state` (read from `path`) onto `target`'s names: best prefix, layout, shapes."""
    p = Path(path)
    wanted = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    layout = detect_layout(state)
    best: Match | None = None
    for prefix in _prefixes(state):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if layout == "lukemelas":
            sub = _lukemelas_to_timm(sub, wanted)
        m = _fit(p, layout, prefix, len(state), sub, wanted)
        if best is None or len(m.state) + len(m.bad_shapes) > len(best.state) + len(best.bad_shapes):
            best = m
    assert best is not None
    return best


def load_weights(path: str | Path, target: torch.nn.Module, what: str = "") -> Match:
    """Load a weights file into `target` (named `what` in errors), or raise one line."""
    state = read_state_dict(path)
    m = match_state(path, state, target)
    if not m.ok:
        raise VgkitError(f"{m.path}: does not fit {what or type(target).__name__}: {m.summary()}")
    target.load_state_dict(m.state)
    return m


def _prefixes(state: Mapping[str, Tensor]) -> list[str]:
    """"" and each leading ``a.`` / ``a.b.`` of the names: candidate wrapper prefixes."""
    found = {""}
    for k in state:
        parts = k.split(".")
        for n in (1, 2):
            if len(parts) > n:
                found.add(".".join(parts[:n]) + ".")
    return sorted(found, key=lambda s: (s.count("."), s))


def _fit(path: Path, layout: str, prefix: str, total: int, sub: Mapping[str, Tensor],
         wanted: Mapping[str, tuple[int, ...]]) -> Match:
    m = Match(path, layout, prefix, total, {})
    used = set()
    for name, shape in wanted.items():
        key = name if name in sub else _dotted(name)
        if key not in sub:
            m.missing.append(name)
            continue
        used.add(key)
        if tuple(sub[key].shape) != shape:
            m.bad_shapes.append((key, tuple(sub[key].shape), shape))
        else:
            m.state[name] = sub[key]
    m.unused = total - len(used)
    return m


def _dotted(name: str) -> str:
    """timm's FeatureListNet flattens ``features.28.weight`` into ``features_28.weight``."""
    head, _, rest = name.partition(".")
    return re.sub(r"_(\d+)$", r".\1", head) + ("." + rest if rest else "")


def _lukemelas_to_timm(sub: Mapping[str, Tensor], wanted: Mapping[str, tuple[int, ...]]
                       ) -> dict[str, Tensor]:
    """EfficientNet-PyTorch names -> timm EfficientNet names; flat block N -> N-th blocks.S.I."""
    blocks = sorted({tuple(map(int, k.split(".")[1:3])) for k in wanted
                     if re.match(r"blocks\.\d+\.\d+\.", k)})
    out: dict[str, Tensor] = {}
    expands = {k.split(".")[1] for k in sub if re.match(r"_blocks\.\d+\._expand_conv\.", k)}
    for k, v in sub.items():
        parts = k.split(".")
        if parts[0] == "_blocks" and len(parts) > 3 and parts[1].isdigit():
            n = int(parts[1])
            table = _LUKEMELAS_EXPAND if parts[1] in expands else _LUKEMELAS_DS
            if n < len(blocks) and parts[2] in table:
                s, i = blocks[n]
                out[f"blocks.{s}.{i}.{table[parts[2]]}.{'.'.join(parts[3:])}"] = v
                continue
        elif parts[0] in _LUKEMELAS_TOP:
            out[".".join([_LUKEMELAS_TOP[parts[0]], *parts[1:]])] = v
            continue
        out[k] = v  # kept under its own name: counted as unused unless it fits
    return out
