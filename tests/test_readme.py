"""The README's example runs as written (with fewer training steps)."""

import pathlib
import re


def test_readme_example_runs():
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    code = re.search(r"## A short example\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "range(200)" in code
    scope = {}
    exec(compile(code.replace("range(200)", "range(3)"), "README.md", "exec"), scope)
    flow = scope["flow"]
    assert flow.norms.shape == (100,)
    assert float(flow.norms[0]) < float(flow.norms[-1])  # the LSTM's gradient decays backwards in time
    assert scope["state"].step == 3
