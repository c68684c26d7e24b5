"""The restricted unpickler: plain data loads, anything naming a global is refused unrun."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from vgkit.data.safe_pickle import safe_load, safe_loads
from vgkit.errors import VgkitError

try:
    from referit_forms import py2_dumps
except ImportError:  # tests/data imported as a package
    from tests.data.referit_forms import py2_dumps

P = pickle

# What Python 2.7 writes for pickle.dumps([{'id': 7L, 'raw': 'caf\xc3\xa9', 'u': u'caf\xe9',
# 'f': 1.5, 'ok': True, 'none': None, 't': (1, 2)}], 2), opcode by opcode (no memo).
PY2_PICKLE = b"".join([
    P.PROTO, b"\x02", P.EMPTY_LIST, P.EMPTY_DICT, P.MARK,
    P.SHORT_BINSTRING, b"\x02id", P.LONG1, b"\x01\x07",
    P.SHORT_BINSTRING, b"\x03raw", P.SHORT_BINSTRING, b"\x05caf\xc3\xa9",
    P.SHORT_BINSTRING, b"\x01u", P.BINUNICODE, b"\x05\x00\x00\x00caf\xc3\xa9",
    P.SHORT_BINSTRING, b"\x01f", P.BINFLOAT, b"?\xf8\x00\x00\x00\x00\x00\x00",
    P.SHORT_BINSTRING, b"\x02ok", P.NEWTRUE,
    P.SHORT_BINSTRING, b"\x04none", P.NONE,
    P.SHORT_BINSTRING, b"\x01t", P.BININT1, b"\x01", P.BININT1, b"\x02", P.TUPLE2,
    P.SETITEMS, P.APPEND, P.STOP,
])


def test_python2_protocol2_pickle_latin1_and_bytes():
    assert pickle.loads(PY2_PICKLE, encoding="latin1") == safe_loads(PY2_PICKLE)
    (d,) = safe_loads(PY2_PICKLE)
    assert d == {"id": 7, "raw": "caf\xc3\xa9", "u": "café", "f": 1.5, "ok": True,
                 "none": None, "t": (1, 2)}
    (b,) = safe_loads(PY2_PICKLE, encoding="bytes")
    assert b[b"raw"].decode("utf-8") == "café" and b[b"u"] == "café"


def test_py2_style_pickler_roundtrip(tmp_path):
    data = [{b"ref_id": 3, b"sentences": [{b"raw": "été".encode(), b"sent_id": 0}],
             b"long": b"x" * 300}]
    path = tmp_path / "refs.p"
    path.write_bytes(py2_dumps(data))
    assert safe_load(path, encoding="bytes") == data
    with path.open("rb") as f:  # a file object works too
        assert safe_load(f)[0]["long"] == "x" * 300


@pytest.mark.parametrize("proto", [0, 1, 2, 4, 5])
def test_python3_plain_data_all_protocols(proto):
    data = [{"a": [1, 2.5, None, True], "b": ("x", b"\x00\xff"), "c": {1, 2},
             "d": frozenset({"q"}), "e": 1 + 2j, "big": 2**80}]
    assert safe_loads(pickle.dumps(data, protocol=proto)) == data


def test_reconstructor_of_allowed_types():
    # copy_reg._reconstructor(dict, dict, {...}) in protocol 0, as old py2 code wrote.
    payload = (b"ccopy_reg\n_reconstructor\n(c__builtin__\ndict\nc__builtin__\ndict\n"
               b"(dp0\nS'a'\nI1\nstRp1\n.")
    assert safe_loads(payload) == {"a": 1}


class _Touch:
    def __init__(self, how: str, marker: Path) -> None:
        self.how, self.marker = how, marker

    def __reduce__(self):
        m = str(self.marker)
        if self.how == "os.system":
            return os.system, (f"touch {m}",)
        if self.how == "eval":
            return builtins.eval, (f"open({m!r}, 'w').close()",)
        if self.how == "exec":
            return builtins.exec, (f"open({m!r}, 'w').close()",)
        return subprocess.Popen, (["touch", m],)


@pytest.mark.parametrize(("how", "named"), [("os.system", "system"), ("eval", "builtins.eval"),
                                            ("exec", "builtins.exec"),
                                            ("popen", "subprocess.Popen")])
@pytest.mark.parametrize("proto", [0, 2, 4])
def test_malicious_pickle_refused_and_never_runs(tmp_path, how, named, proto):
    marker = tmp_path / "pwned"
    # Hidden deep inside otherwise plain data, as a poisoned refs file would be.
    payload = pickle.dumps([{"ref_id": 1, "sentences": [{"raw": _Touch(how, marker)}]}],
                           protocol=proto)
    path = tmp_path / "refs(berkeley).p"
    path.write_bytes(payload)
    with pytest.raises(VgkitError, match="refused to unpickle") as exc:
        safe_load(path)
    assert named in str(exc.value) and str(path) in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize(("payload", "named"), [
    (b"cposix\nsystem\n(S'touch MARK'\ntR.", "posix.system"),  # how py2 names os.system
    (b"c__builtin__\neval\n(S'1'\ntR.", "__builtin__.eval"),
    (b"\x80\x04\x8c\x08builtins\x8c\x15object.__subclasses__\x93.", "object.__subclasses__"),
    (b"\x80\x04\x8c\x08builtins\x8c\x07getattr\x93.", "builtins.getattr"),
    (b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.", "rot13"),
])
def test_handwritten_payloads_refused(tmp_path, payload, named):
    marker = tmp_path / "MARK"
    with pytest.raises(VgkitError) as exc:
        safe_loads(payload.replace(b"MARK", str(marker).encode()))
    assert named in str(exc.value)
    assert not marker.exists()


def test_persistent_id_refused():
    with pytest.raises(VgkitError, match="persistent id"):
        safe_loads(b"\x80\x02X\x01\x00\x00\x00xQ.")  # BINPERSID


def test_garbage_and_missing(tmp_path):
    with pytest.raises(VgkitError, match="not a readable pickle"):
        safe_loads(b"\x80\x02]q\x00(K\x01")  # truncated
    with pytest.raises(VgkitError, match="not found"):
        safe_load(tmp_path / "nope.p")
    with pytest.raises(VgkitError, match="not a readable pickle"):
        safe_load(io.BytesIO(b"not a pickle at all"))


def test_refusal_happens_before_any_call(tmp_path):
    # A child process proves nothing ran even via interpreter-level side effects.
    marker = tmp_path / "child-pwned"
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps(_Touch("os.system", marker), protocol=2))
    code = ("import sys; from vgkit.data.safe_pickle import safe_load\n"
            "try:\n safe_load(sys.argv[1])\nexcept Exception as e: print(type(e).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
                         check=True)
    assert out.stdout.strip() == "VgkitError"
    assert not marker.exists()
