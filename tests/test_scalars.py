"""Fast paths for plain data in ``rmp._core``: ``pack_scalars``/``unpack_scalars`` (the
packed form in which a pool sends map chunks and results that are lists of exact ints or
floats, ``src/py/scalars.rs``), and the plain message format of queues
(``plain_encode``/``plain_decode``, ``src/py/plain.rs``). What does not qualify must be
refused (None), so that the caller pickles it instead: no object may come back different."""

from __future__ import annotations

import enum
import math
import struct

import pytest

from rmp import _core


class _Small(enum.IntEnum):
    A = 1


class _F(float):
    pass


def _roundtrip(seq, *span):
    packed = _core.pack_scalars(seq, *span)
    assert packed is not None
    return _core.unpack_scalars(packed)


def test_ints_and_floats_round_trip_exactly():
    ints = [0, 1, -1, 255, 256, -(2**63), 2**63 - 1, 10**18]
    assert _roundtrip(ints) == ints and {type(x) for x in _roundtrip(ints)} == {int}
    assert _roundtrip(tuple(ints)) == ints
    floats = [0.0, -0.0, 1.5, float("inf"), -float("inf"), 5e-324, 1.7976931348623157e308]
    got = _roundtrip(floats)
    assert got == floats and [math.copysign(1, x) for x in got[:2]] == [1.0, -1.0]
    nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_1234))[0]
    (back,) = _roundtrip([nan])
    assert struct.pack("<d", back) == struct.pack("<d", nan)  # the payload too


def test_a_span_of_the_sequence():
    xs = list(range(100))
    assert _roundtrip(xs, 10, 20) == xs[10:20]
    assert _roundtrip(xs, 95, 1000) == xs[95:]
    assert _core.pack_scalars(xs, 50, 50) is None
    assert _core.pack_scalars(xs, 200) is None


@pytest.mark.parametrize(
    "odd", [True, _Small.A, _F(1.0), 2**63, -(2**63) - 1, 1.5, "x", None, b"", [1]]
)
def test_anything_else_in_the_list_refuses_it(odd):
    for base in ([1, 2, 3], [1.0, 2.0, 3.0]):
        if type(odd) is type(base[0]):
            continue
        for at in (0, 1, 2):
            items = list(base)
            items[at] = odd
            assert _core.pack_scalars(items) is None
            assert _core.pack_scalars(tuple(items)) is None


def test_only_lists_and_tuples_and_not_empty_ones():
    assert _core.pack_scalars([]) is None and _core.pack_scalars(()) is None
    assert _core.pack_scalars(range(5)) is None
    assert _core.pack_scalars(iter([1, 2])) is None

    class L(list):
        pass

    assert _core.pack_scalars(L([1, 2])) is None


def test_unpack_reads_any_buffer_up_to_end_and_checks_the_header():
    packed = _core.pack_scalars([7, 8, 9])
    assert _core.unpack_scalars(memoryview(packed + b"trailer"), len(packed)) == [7, 8, 9]
    assert _core.unpack_scalars(bytearray(packed)) == [7, 8, 9]
    with pytest.raises(ValueError, match="header or length"):
        _core.unpack_scalars(packed[:-1])
    with pytest.raises(ValueError, match="header or length"):
        _core.unpack_scalars(b"q")
    with pytest.raises(ValueError, match="header or length"):
        _core.unpack_scalars(b"q\x02" + packed[2:])  # another version
    with pytest.raises(ValueError, match="unknown kind"):
        _core.unpack_scalars(b"x" + packed[1:])
    with pytest.raises(TypeError):
        _core.unpack_scalars("not a buffer")


_PLAIN_VALUES = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**63 - 1,
    1.5,
    float("inf"),
    "",
    "héllo wörld ✓ \x00",
    b"",
    b"\x00\xff" * 100,
    (),
    (1,),
    [],
    [1, [2, (3, "x")]],
    {},
    {"a": 1, 2: [None], (1, 2): {"k": b"v"}, 1.5: True, None: (), b"b": "s"},
    "x" * 100_000,
]


def _same(a, b):
    """Equal, of the same exact types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


@pytest.mark.parametrize("obj", _PLAIN_VALUES, ids=range(len(_PLAIN_VALUES)))
def test_plain_messages_round_trip_exactly(obj):
    data = _core.plain_encode(obj)
    assert data is not None and data[:2] == b"P\x01"
    back = _core.plain_decode(data)
    assert _same(back, obj)
    assert _same(_core.plain_decode(bytearray(data)), obj)


def test_plain_messages_keep_float_bits():
    nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_1234))[0]
    back = _core.plain_decode(_core.plain_encode([nan, -0.0]))
    assert struct.pack("<d", back[0]) == struct.pack("<d", nan)
    assert math.copysign(1, back[1]) == -1.0


def test_what_plain_messages_refuse():
    shared = [1]
    cyclic = [1]
    cyclic.append(cyclic)
    d = {}
    for obj in (
        2**64,
        -(2**63) - 1,
        1j,
        "\ud800",  # a lone surrogate: not UTF-8
        {1, 2},
        frozenset(),
        bytearray(b"x"),
        _Small.A,
        _F(1.0),
        object(),
        [shared, shared],  # shared list: pickle keeps the sharing, this format cannot
        {"a": d, "b": d},
        cyclic,
        list(range(300)),  # past the item budget
        [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]],  # past the depth
    ):
        assert _core.plain_encode(obj) is None, obj
    # Equal immutable values may repeat.
    assert _core.plain_decode(_core.plain_encode(("s", "s", (1,), (1,)))) == ("s", "s", (1,), (1,))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"P",
        b"Q\x01N",
        b"P\x02N",
        b"P\x01",
        b"P\x01Z",
        b"P\x01i\x00",
        b"P\x01NN",
        b"P\x01s\xff\xff\xff\xff",
        b"P\x01(\xff\xff\xff\x7f",
        b"P\x01s\x01\x00\x00\x00\xff",
        b"P\x01{\x01\x00\x00\x00[\x00\x00\x00\x00N",
    ],
)
def test_corrupt_plain_messages_raise(data):
    with pytest.raises((ValueError, TypeError)):
        _core.plain_decode(data)


def test_plain_encode_many():
    objs = [(0, i) for i in range(50)] + [{"a": [1.5, None]}, b"x", "s"]
    blob, bounds = _core.plain_encode_many(objs)
    starts = [0] + bounds[:-1]
    assert [_core.plain_decode(blob[a:b]) for a, b in zip(starts, bounds)] == objs
    assert _core.plain_encode_many(tuple(objs))[1] == bounds
    assert _core.plain_encode_many(objs + [object()]) is None
    assert _core.plain_encode_many(iter(objs)) is None  # the caller makes a list first
    assert _core.plain_encode_many([]) == (b"", [])
