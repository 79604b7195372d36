"""The --at value language: numbers, nested lists, seeded generators, sizes and limits."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.errors import UserInputError
from gradcheck_cli.values import max_bytes, parse_value, parse_values, split_assignment


def value(raw, seed: int = 0):
    return parse_value("x", raw, np.random.default_rng(seed))


# ---- numbers and lists ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("2", 2.0), ("-1.5e-3", -1.5e-3), ("+3", 3.0), (".5", 0.5), ("5.", 5.0), ("1e3", 1000.0),
    ("  7  ", 7.0), ("6.7", 6.7), (2, 2.0), (2.5, 2.5), (-0.0, 0.0),
])
def test_number(raw, expected):
    v = value(raw)
    assert v.array.shape == () and v.array.dtype == np.float64
    assert float(v.array) == expected
    assert not v.generated


@pytest.mark.parametrize("raw,expected", [
    ("[1,2,3]", [1.0, 2.0, 3.0]),
    ("[[1,2],[3,4]]", [[1.0, 2.0], [3.0, 4.0]]),
    ("  [ 1 , -2.5e1 ]  ", [1.0, -25.0]),
    ("[[[1]]]", [[[1.0]]]),
    ("[1,2,]", [1.0, 2.0]),
    ([1, 2], [1.0, 2.0]),                # TOML arrays arrive as lists
    ([[1.5], [2]], [[1.5], [2.0]]),
])
def test_nested_list(raw, expected):
    v = value(raw)
    np.testing.assert_array_equal(v.array, np.array(expected))
    assert v.array.dtype == np.float64


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_values(raw):
    """A user may check what happens at inf or nan; the check reports it, the value reader accepts it."""
    assert str(float(value(raw).array)) == raw


@pytest.mark.parametrize("raw,needle", [
    ("[[1,2],[3]]", "ragged"),
    ([[1, 2], [3]], "ragged"),
    ("[]", "empty list"),
    ("[[]]", "empty list"),
    ("[1,2", "expected ']'"),
    ("[1,,2]", "expected a number, found ','"),
    ("[1 2]", "expected ',' or ']'"),
    ("[1,2]]", "unexpected ']' after the value"),
    ("1,2", "unexpected ','"),
    ("1e999", "overflows float64"),
    ("0x10", "unexpected"),
    ("1_000", "unexpected"),
    ("[randn(2)]", "expected a number"),
    ("[" * 40 + "1" + "]" * 40, "nest more than 32 levels"),
    ("", "empty value"),
    (True, "not a boolean"),
    ({"a": 1}, "must be a number, a list or a generator"),
])
def test_bad_value(raw, needle):
    with pytest.raises(UserInputError, match=None) as info:
        value(raw)
    assert needle in info.value.message
    if isinstance(raw, str) and raw:
        assert "'x'" in info.value.message  # the message names the variable


# ---- generators ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,shape", [
    ("randn(2, 3)", (2, 3)), ("randn()", ()), ("rand(4)", (4,)), ("zeros(2)", (2,)), ("ones(1, 2)", (1, 2)),
    ("randn(2,)", (2,)), ("linspace(0, 1, 5)", (5,)), ("randn(1,1,1,1,1,1,1,1)", (1,) * 8),
])
def test_generator_shapes(raw, shape):
    v = value(raw)
    assert v.array.shape == shape and v.array.dtype == np.float64
    assert v.generated


def test_zeros_ones_linspace_values():
    np.testing.assert_array_equal(value("zeros(2, 2)").array, np.zeros((2, 2)))
    np.testing.assert_array_equal(value("ones(3)").array, np.ones(3))
    np.testing.assert_array_equal(value("linspace(0, 1, 5)").array, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(value("linspace(1, 0, 3)").array, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(value("linspace(-2, 2, 1)").array, [-2.0])


def test_generators_are_deterministic_per_seed():
    items = [("a", "randn(5)"), ("b", "rand(3)"), ("c", "randn()")]
    first = parse_values(items, seed=0)
    again = parse_values(items, seed=0)
    other = parse_values(items, seed=1)
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(first[name].array, again[name].array)
        assert not np.array_equal(first[name].array, other[name].array)


def test_generators_draw_in_order_from_one_stream():
    """Two randn(3) in one command are different draws (not the same seeded restart)."""
    values = parse_values([("a", "randn(3)"), ("b", "randn(3)")], seed=0)
    assert not np.array_equal(values["a"].array, values["b"].array)


def test_generators_do_not_touch_global_random_state():
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    parse_values([("a", "randn(100)"), ("b", "rand(10)")], seed=0)
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_distributions():
    normal = value("randn(20000)").array
    uniform = value("rand(20000)").array
    assert abs(normal.mean()) < 0.05 and abs(normal.std() - 1) < 0.05
    assert uniform.min() >= 0.0 and uniform.max() < 1.0 and abs(uniform.mean() - 0.5) < 0.02


@pytest.mark.parametrize("raw,needle", [
    ("randn(-1)", "whole numbers >= 0, got -1"),
    ("randn(2.5)", "whole numbers >= 0, got 2.5"),
    ("zeros(3, -2)", "whole numbers >= 0"),
    ("randn(0)", "no elements"),
    ("linspace(0, 1, 0)", "no elements"),
    ("linspace(0, 1)", "takes three numbers"),
    ("linspace(0, 1, 2.5)", "whole numbers"),
    ("randn(1,1,1,1,1,1,1,1,1)", "at most 8 dimensions"),
    ("randx(3)", "unknown generator 'randx' (known: randn, rand, zeros, ones, linspace, randint; int(...)"),
    ("True", "unknown generator"),
    ("randn(2 3)", "expected ',' or ')'"),
    ("randn(2", "expected ')'"),
    ("randn", "expected '('"),
    ("randn(2)x", "unexpected 'x' after the value"),
    ("randn(1e12)", "GRADCHECK_MAX_BYTES"),
    ("zeros(0, 1e300)", "GRADCHECK_MAX_BYTES"),
])
def test_bad_generator(raw, needle):
    with pytest.raises(UserInputError) as info:
        value(raw)
    assert needle in info.value.message


# ---- the size limit --------------------------------------------------------------------------------

def test_size_limit_from_environment(monkeypatch):
    monkeypatch.setenv("GRADCHECK_MAX_BYTES", "800")  # 100 float64 numbers
    assert max_bytes() == 800
    assert value("randn(100)").array.shape == (100,)
    assert value("zeros(10, 10)").array.shape == (10, 10)
    for raw in ("randn(101)", "zeros(11, 10)", "linspace(0, 1, 101)", "[" + ",".join(["1"] * 101) + "]"):
        with pytest.raises(UserInputError, match="GRADCHECK_MAX_BYTES") as info:
            value(raw)
        assert "'x'" in info.value.message


def test_default_size_limit(monkeypatch):
    monkeypatch.delenv("GRADCHECK_MAX_BYTES", raising=False)
    assert max_bytes() == 1 << 30
    with pytest.raises(UserInputError, match="GRADCHECK_MAX_BYTES"):
        value("randn(100000, 100000)")  # 80 GB: refused before numpy allocates anything


def test_bad_size_limit_setting(monkeypatch):
    monkeypatch.setenv("GRADCHECK_MAX_BYTES", "lots")
    with pytest.raises(UserInputError, match="GRADCHECK_MAX_BYTES must be a number"):
        value("randn(3)")


# ---- NAME=VALUE and duplicates -------------------------------------------------------------------

@pytest.mark.parametrize("item,expected", [
    ("x=1", ("x", "1")), ("x = 2", ("x", "2")), (" w=[1, 2]", ("w", "[1, 2]")), ("x_1=randn(3)", ("x_1", "randn(3)")),
    ("y=a=b", ("y", "a=b")),  # only the first '=' splits; the value reader then rejects 'a=b'
])
def test_split_assignment(item, expected):
    assert split_assignment(item) == expected


@pytest.mark.parametrize("item,needle", [
    ("x", "expected NAME=VALUE"), ("1x=2", "not a valid name"), ("__x=1", "not a valid name"),
    ("x=", "no value after '='"), ("=3", "not a valid name"), ("x.y=1", "not a valid name"),
])
def test_bad_assignment(item, needle):
    with pytest.raises(UserInputError) as info:
        split_assignment(item)
    assert needle in info.value.message


def test_value_given_twice():
    with pytest.raises(UserInputError, match="'x' is given twice"):
        parse_values([("x", "1"), ("x", "2")], seed=0)


# ---- integer and boolean tensors (class targets, indices, masks) -----------------------------------

@pytest.mark.parametrize("raw,expected,kind", [
    ("int([0, 2, 1])", np.array([0, 2, 1], dtype=np.int64), "int"),
    ("int(3)", np.array(3, dtype=np.int64), "int"),
    ("int([[1, -2], [3, 4]])", np.array([[1, -2], [3, 4]], dtype=np.int64), "int"),
    ("int([1e3])", np.array([1000], dtype=np.int64), "int"),
    ("bool([1, 0, 1])", np.array([True, False, True]), "bool"),
    ("bool([true, false])", np.array([True, False]), "bool"),
    ("bool(true)", np.array(True), "bool"),
])
def test_integer_and_boolean_values_keep_their_kind(raw, expected, kind):
    v = value(raw)
    assert v.kind == kind and not v.differentiable and v.array.dtype == expected.dtype
    np.testing.assert_array_equal(v.array, expected)


@pytest.mark.parametrize("raw,needle", [
    ("int([0.5, 1])", "whole numbers below 2**53 in magnitude, got 0.5"),
    ("int([1e17])", "whole numbers below 2**53"),
    ("int([nan])", "must be finite"),
    ("bool([2])", "true/false or 1/0"),
    ("int([true])", "expected a number, found 'true'"),
    ("int(randn(3))", "takes a number or a list (randint(low, high, d, ...) draws integers)"),
    ("int([])", "no elements"),
    ("int([[1], [2, 3]])", "ragged"),
    ("int([1]) + 1", "unexpected '+ 1'"),
    ("randint(5, 2, 3)", "high must exceed low"),
    ("randint(0.5, 2, 3)", "needs whole numbers"),
    ("randint(3)", "takes the range [low, high)"),
    ("randint(0, 3, 2.5)", "sizes must be whole numbers"),
])
def test_integer_value_errors_say_what_is_wrong(raw, needle):
    with pytest.raises(UserInputError) as err:
        value(raw)
    assert needle in str(err.value)


def test_randint_draws_seeded_whole_numbers_in_range():
    a, b = value("randint(0, 3, 1000)", seed=1), value("randint(0, 3, 1000)", seed=1)
    assert a.kind == "int" and a.generated and a.array.dtype == np.int64 and a.array.shape == (1000,)
    np.testing.assert_array_equal(a.array, b.array)
    assert set(np.unique(a.array)) == {0, 1, 2}  # every class of [0, 3), nothing outside it


def test_integer_values_are_not_redrawn_by_points():
    from gradcheck_cli.values import redraw

    v = value("int([0, 2, 1])")
    assert redraw(v, np.random.default_rng(0)) is v.array


def test_integer_values_stay_integers_under_a_complex_dtype():
    v = parse_value("y", "int([0, 1])", np.random.default_rng(0), complex_=True)
    assert v.kind == "int" and not v.complex and v.array.shape == (2,)
    with pytest.raises(UserInputError, match="randint draws an integer tensor"):
        parse_value("z", "complex(randint(0, 2, 3), zeros(3))", np.random.default_rng(0), complex_=True)


@pytest.mark.parametrize("array,kind", [(np.array([0, 2]), "int"), (np.array([True]), "bool"),
                                        (np.array([0.5, 1.5]), "float")])
def test_numpy_arrays_from_python_callers_keep_their_kind(array, kind):
    v = value(array)
    assert v.kind == kind
    np.testing.assert_array_equal(v.array, array)


def test_shape_of_reads_randint_sizes_without_drawing():
    from gradcheck_cli.values import shape_of

    assert shape_of("y", "randint(0, 10, 1000, 1000)") == (1000, 1000)
    assert shape_of("y", "int([[1, 2]])") == (1, 2)


@pytest.mark.parametrize("text,is_tensor", [
    ("randn(4)", True), (" int([0, 1])", True), ("bool([1])", True), ("tensor([1, 2])", True),
    ("randint(0, 3, 2)", True), ("zeros (2)", True), ("[1, 2]", False), ("1.5", False), ("mean", False),
    ("'randn(4)'", False), ("randomize", False), (3, False),
])
def test_tensor_text_is_what_a_kw_value_makes_a_tensor(text, is_tensor):
    from gradcheck_cli.values import is_tensor_text

    assert is_tensor_text(text) is is_tensor


def test_tensor_of_a_literal_list_is_that_list():
    v = value("tensor([[1, 2], [3, 4]])")
    assert v.kind == "float" and v.array.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(UserInputError, match="expected"):
        value("tensor([1, 2]")
