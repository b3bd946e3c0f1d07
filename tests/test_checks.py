"""Tests of stabletrain.checks: accepted values pass through, bad ones name the parameter."""

import math
import warnings

import numpy as np
import pytest
import torch

from stabletrain.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_range,
    check_tensor,
    warn_if_probabilities,
)


def test_check_int_converts_and_bounds():
    assert check_int("n", 3, min=1, max=6) == 3
    value = check_int("n", np.int64(4), min=1)
    assert value == 4 and type(value) is int
    assert check_int("n", None, optional=True) is None
    with pytest.raises(ValueError, match=r"depth must be in \[1, 6\], got 7"):
        check_int("depth", 7, min=1, max=6)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_int("n", 0, min=1)
    with pytest.raises(ValueError, match="n must be <= 2, got 3"):
        check_int("n", 3, max=2)


@pytest.mark.parametrize("bad", [True, 2.0, "3", None])
def test_check_int_rejects_other_types(bad):
    with pytest.raises(TypeError, match=f"n must be an int, got {type(bad).__name__}"):
        check_int("n", bad)


def test_check_float_bounds_open_and_closed():
    value = check_float("x", 1, min=0)
    assert value == 1.0 and type(value) is float
    assert check_float("x", 0.0, min=0) == 0.0
    with pytest.raises(ValueError, match=r"x must be > 0, got 0\.0"):
        check_float("x", 0.0, min=0, low_open=True)
    assert check_float("x", 1.0, min=0, max=1, low_open=True) == 1.0
    with pytest.raises(ValueError, match=r"x must be in \(0, 1\), got 1.0"):
        check_float("x", 1.0, min=0, max=1, low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"x must be in \[0, 1\], got -0.5"):
        check_float("x", -0.5, min=0, max=1)
    with pytest.raises(ValueError, match="x must be < 2"):
        check_float("x", 2, max=2, high_open=True)
    assert check_float("x", None, min=0, optional=True) is None


def test_check_float_finite_and_nan():
    with pytest.raises(ValueError, match="x must be finite, got inf"):
        check_float("x", math.inf)
    with pytest.raises(ValueError, match="x must be finite, got nan"):
        check_float("x", math.nan)
    assert check_float("x", math.inf, min=0, finite=False) == math.inf
    with pytest.raises(ValueError, match="x must be >= 0, got nan"):  # NaN fails any bound
        check_float("x", math.nan, min=0, finite=False)


@pytest.mark.parametrize("bad", [True, "0.5", [1.0], None])
def test_check_float_rejects_other_types(bad):
    with pytest.raises(TypeError, match="alpha must be a number, got"):
        check_float("alpha", bad)


def test_optional_is_named_in_the_type_error():
    with pytest.raises(TypeError, match="gate_bound must be a number or None, got str"):
        check_float("gate_bound", "4", optional=True)


def test_check_bool_accepts_only_real_bools():
    assert check_bool("flag", True) is True and check_bool("flag", False) is False
    assert check_bool("flag", None, optional=True) is None
    for bad in ("false", 0, 1, None, np.float64(1.0)):
        with pytest.raises(TypeError, match=r"flag must be a bool \(True or False\), got"):
            check_bool("flag", bad)


def test_check_choice():
    assert check_choice("mode", "binary", ("binary", "multiclass")) == "binary"
    assert check_choice("attention", None, (None, "se")) is None
    assert check_choice("k", np.int64(2), (1, 2)) == 2
    with pytest.raises(
        ValueError, match=r"mode must be one of \('binary', 'multiclass'\), got 'x'"
    ):
        check_choice("mode", "x", ("binary", "multiclass"))
    with pytest.raises(ValueError, match="k must be one of"):
        check_choice("k", True, (1, 2))  # a bool is not the int 1


def test_check_keys():
    assert check_keys("options", {"a": 1}, ("a", "b")) == {"a": 1}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['c'\] in options; accepted"):
        check_keys("options", {"a": 1, "c": 2}, ("a", "b"))
    with pytest.raises(TypeError, match="options must be a mapping, got list"):
        check_keys("options", [("a", 1)], ("a",))


def test_check_range():
    assert check_range("size", (0.1, 0.2), min=0, max=0.5) == (0.1, 0.2)
    assert check_range("n", [1, 4], min=1, max=10, integer=True) == (1, 4)
    with pytest.raises(ValueError, match=r"size must satisfy 0 <= low <= high <= 0\.5"):
        check_range("size", (0.3, 0.1), min=0, max=0.5)
    with pytest.raises(ValueError, match="size must be a pair"):
        check_range("size", (0.1, 0.2, 0.3), min=0, max=1)
    with pytest.raises(TypeError, match="size must be a pair of numbers"):
        check_range("size", 0.3, min=0, max=1)
    with pytest.raises(ValueError, match=r"n must satisfy 1 <= low <= high, got \(2, 1\)"):
        check_range("n", (2, 1), min=1, integer=True)
    with pytest.raises(TypeError, match=r"n\[1\] must be an int"):
        check_range("n", (1, 2.5), min=0, max=9, integer=True)


def test_a_0d_tensor_or_array_of_a_number_is_that_number():
    for value in (torch.tensor(3), torch.tensor(3, dtype=torch.uint8), np.array(3)):
        assert (n := check_int("n", value, min=1)) == 3 and type(n) is int
    for value in (
        torch.tensor(0.5),
        torch.tensor(2),
        np.array(0.5),
        torch.tensor(0.5, requires_grad=True),
    ):
        assert type(x := check_float("x", value, max=2)) is float and x in (0.5, 2.0)
    assert check_float("x", torch.tensor(0.1)) == float(torch.tensor(0.1))  # float32's value
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_int("n", torch.tensor(0), min=1)
    for bad in (torch.tensor(3.0), torch.tensor(True), np.array(True), torch.tensor([3])):
        with pytest.raises(TypeError, match=r"n must be an int, got (Tensor|ndarray)"):
            check_int("n", bad)
    for bad in (torch.tensor(False), torch.tensor(1 + 2j), np.array("1"), torch.ones(1, 1)):
        with pytest.raises(TypeError, match=r"x must be a number, got (Tensor|ndarray)"):
            check_float("x", bad)


def test_check_tensor_names_the_argument():
    value = torch.zeros(2)
    assert check_tensor("x", value) is value
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list$"):
        check_tensor("x", [0.0])


def test_warn_if_probabilities_settles_on_logits_and_leaves_constants_open():
    spread = torch.linspace(0, 1, 16)
    with pytest.warns(UserWarning, match="probs"):
        assert warn_if_probabilities(spread, "probs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_probabilities(spread - 0.01, "probs")  # a value < 0: logits
        assert not warn_if_probabilities(torch.full((16,), 0.3), "probs")  # a fresh network's
        assert not warn_if_probabilities(spread * 0.4 + 0.3, "probs")  # under half of [0, 1]
        assert not warn_if_probabilities(spread[:15], "probs")  # too few to tell
        assert not warn_if_probabilities(torch.ones(16, dtype=torch.long), "probs")
