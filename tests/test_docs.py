"""The examples in docstrings run and give what they show."""

import doctest

import pytest

import accord
from accord import _errors, work
from accord.share import _proxy, _share
from accord.work import _errors as _work_errors
from accord.work import _graph, _lock, _queue

MODULES = [accord, _errors, _share, _proxy, work, _work_errors, _graph, _lock, _queue]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0
    assert failures == 0


def test_readme_example_runs(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    script = tmp_path / "readme_example.py"
    script.write_text(example)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
