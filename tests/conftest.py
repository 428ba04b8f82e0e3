import os

# The suite compiles hundreds of tiny programs, whose run time is negligible: XLA's backend
# optimisation passes cost more than they save there (about a third of the suite's time on 2
# cores), and XLA's CPU fusion emitters take about twice the compile time of its classic emitters
# (1.7 s against 3.9 s for a vmapped LSTM training chunk on the 2-core EPYC). Set before JAX
# starts; subprocesses started by tests inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
     "--xla_llvm_disable_expensive_passes=true", "--xla_cpu_use_fusion_emitters=false"]).strip()

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


_SLOW_LIST = os.path.join(os.path.dirname(__file__), "slow_in_default.txt")


def _slow_in_default() -> set[str]:
    with open(_SLOW_LIST) as fh:
        return {line.split("#", 1)[0].strip() for line in fh if line.split("#", 1)[0].strip()}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the tests listed in slow_in_default.txt slow (before `-m 'not slow'` deselects)."""
    slow = _slow_in_default()
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)
