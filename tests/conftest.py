import os

# The suite compiles hundreds of tiny programs, whose run time is negligible: XLA's backend
# optimisation passes cost more than they save there (about a third of the suite's time on 2
# cores). Set before JAX starts; subprocesses started by tests inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
     "--xla_llvm_disable_expensive_passes=true"]).strip()

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
