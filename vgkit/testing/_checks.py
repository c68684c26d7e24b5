"""One check per kind of component: the contract of :mod:`vgkit.interfaces`, enforced."""

from __future__ import annotations

import functools
import json
import unittest
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vgkit.boxes import FORMATS, from_xyxy, to_xyxy
from vgkit.errors import VgkitError
from vgkit.interfaces import (
    Backbone,
    FeatureSpec,
    GroundingState,
    LossOutput,
)
from vgkit.model import compute_loss
from vgkit.testing._parts import (
    BOX,
    PHRASES,
    SIZE,
    _check,
    assert_finite,
    assert_grads,
    attend,
    base_spec,
    build,
    chain_for,
    compose,
    images,
    l1_to_box,
    registry,
    richest_chain,
    run,
    seeded,
)

# ---------------------------------------------------------------- per kind


def check_backbone(name: str) -> None:
    x = images()
    bb = seeded(lambda: build("backbone", name)).eval()
    again = seeded(lambda: build("backbone", name)).eval()
    with torch.no_grad():
        out, out2 = bb(x), again(x)
    h, w = SIZE[0] // bb.stride, SIZE[1] // bb.stride
    _check(tuple(out.shape) == (2, bb.channels, h, w),
           f"V_map is {tuple(out.shape)}, expected {(2, bb.channels, h, w)} (channels, stride)")
    assert_finite(out, f"backbone {name} output")
    _check(torch.equal(out, out2), "two builds under one seed differ")
    ident = bb.identity()
    _check(isinstance(ident, dict) and json.dumps(ident, sort_keys=True),
           f"identity() must be a JSON-serialisable dict, got {ident!r}")
    _check(ident == again.identity(), "identity() is the feature-cache key: it must be stable")
    fields = registry().get("backbone", name).options.model_fields
    for frozen in ({bb.frozen, not bb.frozen} if "frozen" in fields else {bb.frozen}):
        module = bb if frozen == bb.frozen else seeded(
            functools.partial(build, "backbone", name, {"frozen": frozen}))
        _check(module.frozen is frozen, f"built with frozen={frozen}, .frozen is {module.frozen}")
        check_frozen(module, x) if frozen else check_trainable_backbone(module)


def check_frozen(bb: nn.Module, x: Tensor) -> None:
    _check(not any(p.requires_grad for p in bb.parameters()), "a frozen backbone has trainable params")
    buffers = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.eval()
    with torch.no_grad():
        ref = bb(x)
    bb.train()
    out = bb(x)
    _check(torch.equal(out, ref), "a frozen backbone must behave as in eval mode after .train()")
    changed = [k for k, v in bb.state_dict().items() if not torch.equal(v, buffers[k])]
    _check(not changed, f"a frozen backbone's buffers moved in train mode: {changed[:3]}")


def check_trainable_backbone(bb: Backbone) -> None:
    model, _ = compose(backbone=bb.train())
    l1_to_box(model).backward()
    assert_grads(bb, "backbone")


def check_text_encoder(name: str) -> None:
    enc = seeded(lambda: build("text_encoder", name, vocab=None, embeddings=None)).eval()
    again = seeded(lambda: build("text_encoder", name, vocab=None, embeddings=None)).eval()
    text = enc.tokenize(PHRASES)
    _check(text.ids.dtype == torch.long and text.mask.dtype == torch.bool,
           f"tokenize() gave ids {text.ids.dtype} and mask {text.mask.dtype}: expected long and bool")
    _check(text.ids.shape == text.mask.shape and text.ids.shape[0] == len(PHRASES),
           f"tokenize() gave ids {tuple(text.ids.shape)} and mask {tuple(text.mask.shape)} "
           f"for {len(PHRASES)} phrases")
    with torch.no_grad():
        v_l, v_T = enc(text.ids, text.mask)
        v_T2 = again(text.ids, text.mask)[1]
    B, L = text.ids.shape
    _check(tuple(v_l.shape) == (B, L, enc.dim) and tuple(v_T.shape) == (B, enc.dim),
           f"v_l {tuple(v_l.shape)}, v_T {tuple(v_T.shape)}: expected {(B, L, enc.dim)}, {(B, enc.dim)}")
    assert_finite(v_l, "v_l")
    assert_finite(v_T, "v_T")
    _check(torch.equal(v_T, v_T2), "two builds under one seed differ")
    # padding: the short phrase alone (unpadded), batched with a long one, and padded further
    alone = enc.tokenize(PHRASES[:1])
    _check(text.mask[0].sum() == alone.mask[0].sum() < L, "the short phrase should be padded")
    pad_id = text.ids[0, -1]
    ids = torch.cat([text.ids, pad_id.expand(B, 5)], 1)
    mask = torch.cat([text.mask, torch.zeros(B, 5, dtype=torch.bool)], 1)
    with torch.no_grad():
        v_T_alone = enc(alone.ids, alone.mask)[1]
        v_T_more = enc(ids, mask)[1]
    torch.testing.assert_close(v_T[0], v_T_alone[0], msg="padded words changed v_T")
    torch.testing.assert_close(v_T_more, v_T, msg="extra padding changed v_T")
    model, _ = compose(text_encoder=enc.train())
    l1_to_box(model).backward()
    assert_grads(enc, f"text encoder {name}")


def check_attention(name: str) -> None:
    chain = chain_for(name)
    model, modules = seeded(lambda: compose(attention=(*chain, name)))
    again, _ = seeded(lambda: compose(attention=(*chain, name)))
    module, before = modules[-1], (modules[-2].out_spec if chain else base_spec())
    spec = module.out_spec
    _check(isinstance(spec, FeatureSpec), f"out_spec must be a FeatureSpec, got {spec!r}")
    _check(spec.provided >= before.provided, "out_spec dropped a field an earlier module provided")
    model.eval()
    again.eval()
    with torch.no_grad():  # not through the head: a wrong out_spec should fail here, by name
        state, state2 = attend(model), attend(again)
    _check(tuple(state.visual.shape) == (2, spec.visual_dim), f"state.visual is {tuple(state.visual.shape)}, out_spec.visual_dim is {spec.visual_dim}")
    assert_finite(state.visual, "state.visual")
    if spec.text_dim:
        _check(state.text is not None and tuple(state.text.shape) == (2, spec.text_dim),
               f"state.text must be [2, {spec.text_dim}] (out_spec.text_dim)")
        assert_finite(state.text, "state.text")
    else:
        _check(state.text is None, "out_spec.text_dim is 0: state.text must be None")
    for field in spec.provided:
        value = getattr(state, field, None)
        value = state.extras.get(field) if value is None else value
        _check(value is not None, f"out_spec.provided says {field!r} but the state lacks it")
        assert_finite(value, field)
    _check(torch.equal(state.visual, state2.visual), "two builds under one seed differ")
    model.train()
    l1_to_box(model).backward()
    assert_grads(module, f"attention {name}")


def check_head(name: str) -> None:
    for text_dim in (12, 0):  # with and without a text vector (attention can drop it)
        spec = base_spec().with_(text_dim=text_dim)
        make = functools.partial(build, "head", name, spec=spec)
        head, again = seeded(make), seeded(make)
        _check(head.box_format in FORMATS, f"box_format {head.box_format!r} is not one of {FORMATS}")
        state = GroundingState(V=torch.randn(2, 16, 16), grid=(4, 4), v_l=torch.randn(2, 3, 12),
                               word_mask=torch.ones(2, 3, dtype=torch.bool), v_T=torch.randn(2, 12),
                               visual=torch.randn(2, 16),
                               text=torch.randn(2, text_dim) if text_dim else None)
        head.eval()
        again.eval()
        with torch.no_grad():
            g = head(state)
            _check(tuple(g.shape) == (2, 4), f"the head gave {tuple(g.shape)}, expected (2, 4)")
            assert_finite(g, "head output")
            _check(torch.equal(g, again(state)), "two builds under one seed differ")
            mean = BOX.mean(0)
            head.init_output_bias(from_xyxy(mean, head.box_format, SIZE))
            got = to_xyxy(head(state), head.box_format, SIZE)
        # "about that box": within 2% of the image side
        torch.testing.assert_close(got, mean.expand(2, 4), atol=0.02 * max(SIZE), rtol=0,
                                   msg="init_output_bias(box) must make the head predict ~box")
    model, _ = compose(head=name)
    model.head.init_output_bias(from_xyxy(BOX.mean(0), model.head.box_format, SIZE))
    l1_to_box(model.train()).backward()
    assert_grads(model.head, f"head {name}")


def check_loss(name: str) -> None:
    model, _ = seeded(lambda: compose(attention=richest_chain()))
    try:
        loss = build("loss", name, spec=model.spec)
    except VgkitError as exc:
        raise unittest.SkipTest(f"loss {name} does not build on the richest attention "
                                f"chain: {exc}") from None
    _check(loss.box_format in FORMATS, f"box_format {loss.box_format!r} is not one of {FORMATS}")
    out = run(model)
    result = compute_loss(loss, out, BOX, model.head.box_format, SIZE)
    _check(isinstance(result, LossOutput), f"the loss returned {type(result).__name__}, not LossOutput")
    _check(result.total.dim() == 0, "the loss must be a scalar")
    assert_finite(result.total, "loss")
    for term, value in result.terms.items():
        _check(value.dim() == 0 and torch.isfinite(value), f"term {term} not a finite scalar")
    result.total.backward()
    assert_grads(model.head, f"stub head trained by loss {name}")
    again = compute_loss(loss, out, BOX, model.head.box_format, SIZE)
    _check(torch.equal(again.total, result.total), "same input, different loss")
    # pred == target: every IoU-type term vanishes
    target = from_xyxy(BOX, loss.box_format, SIZE)
    same = loss(target.clone(), target, out.state, SIZE)
    iou_terms = {k: float(v) for k, v in same.terms.items() if "iou" in k.lower()}
    _check(all(abs(v) < 1e-4 for v in iou_terms.values()), f"pred == target: {iou_terms}")
    if list(loss.parameters()):
        assert_grads(loss, f"loss {name}")


CHECKS: dict[str, Callable[[str], None]] = {
    "backbone": check_backbone, "text_encoder": check_text_encoder,
    "attention": check_attention, "head": check_head, "loss": check_loss}
