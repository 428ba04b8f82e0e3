"""One row of the gradient-vanishing study (adding, T=200, the default recipe, 4 seeds) trained
with the XLA path and with the native kernel (``backend="xla"`` and ``backend="native"`` forced
through the cell's sequence hook; ``"auto"``, the default, is the kernel on the CPU): wall time
and per-seed final losses, one JSON line per run.

    python benchmarks/native_row.py lstm-fb1 gru-before
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vanishing

from rnnjax import bench


def forced(make, path: str):
    """The factory ``make`` with its cell's fused sequence forced onto ``path`` (``"xla"`` or
    ``"native"``)."""

    def m(H: int, T: int):
        cell, proj = make(H, T)
        seq = cell.sequence

        def sequence(*args, backend="auto", **kw):
            del backend
            return seq(*args, backend=path, **kw)

        return cell._replace(sequence=sequence), proj

    m.__name__ = f"{make.__name__}-{path}"
    return m


def main(names: list[str]) -> None:
    for name in names:
        make = vanishing.factory(vanishing.spec_by_name(name))
        for label, f in ((name, forced(make, "xla")), (name + "+native", forced(make, "native"))):
            t = time.perf_counter()
            (row,) = bench.run({label: f}, "adding:200", bench.Recipe(), seeds=4, flow=False,
                               trained_flow=False)
            out = dict(seconds=time.perf_counter() - t, finals=[float(v) for v in row.finals])
            print(label, json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["lstm-fb1", "gru-before"])
