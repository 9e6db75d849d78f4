"""The examples in docstrings run and give what they show."""

import doctest
import inspect
import re

import pytest

import accord
from accord import work
from accord._core import _errors
from accord.share import _proxy, _share
from accord.spawn import _pool
from accord.work import _errors as _work_errors
from accord.work import _graph, _lock, _queue

MODULES = [accord, _errors, _share, _proxy, _pool, work, _work_errors, _graph, _lock, _queue]


PUBLIC_MODULES = ("accord", "accord.spawn", "accord.work")


class _DefiningModuleFinder(doctest.DocTestFinder):
    """Public classes report a public ``__module__`` ("accord", "accord.spawn", "accord.work"):
    their examples run with the module whose source defines them, once."""

    def _from_module(self, module, object):
        if inspect.isclass(object) and object.__module__ in PUBLIC_MODULES:
            source = inspect.getsource(module)
            return re.search(rf"^class {object.__name__}\b", source, re.M) is not None
        return super()._from_module(module, object)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the work examples create run.sqlite here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in _DefiningModuleFinder().find(module, module.__name__):
        runner.run(test)
    failures, tried = runner.summarize(verbose=False)
    assert tried > 0
    assert failures == 0


def _readme_programs():
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    # The complete programs; the other blocks are fragments of them.
    return [block for block in blocks if 'if __name__ == "__main__":' in block]


@pytest.mark.parametrize("number", range(2))
def test_readme_programs_run(tmp_path, number):
    import subprocess
    import sys

    script = tmp_path / "readme_example.py"
    script.write_text(_readme_programs()[number])
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_every_readme_program_is_run():
    assert len(_readme_programs()) == 2
