"""The examples in docstrings run and give what they show."""

import doctest

import pytest

import accord
from accord import _errors
from accord.share import _proxy, _share


@pytest.mark.parametrize("module", [accord, _errors, _share, _proxy], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0
    assert failures == 0
