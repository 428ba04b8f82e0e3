"""Checkpoints of a whole [`rnnjax.TrainState`][rnnjax.sweep.TrainState] with orbax: save, restore, resume.

::

    ckpt = rnnjax.checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=3)
    state = ckpt.restore_latest(template) or template    # resume, or start from the template
    ...
    ckpt.save(state)                                      # synchronous, atomic

A checkpoint holds every leaf of the state (``step``, ``params``, ``opt_state`` and the PRNG key,
the key as its raw ``jax.random.key_data``) under one orbax item ``state``, plus a JSON item
``meta`` with each leaf's key path, dtype and shape and a SHA-256 of all leaves. The state is
rebuilt on the structure of a *template* state (the one a fresh run starts from), so any pytree
that ``jax.tree_util`` can flatten (NamedTuple optimizer states, tuples of layer params, typed
keys) round-trips bitwise.

Why resumes are exact: saves are synchronous (``enable_async_checkpointing=False``) and orbax
writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it to ``<step>`` only when
complete (atomic on a local file system), so a process killed at any moment (``SIGKILL`` during a
save included) leaves either the previous checkpoints or the new one, never a half-written step
directory named as a step; leftover tmp directories are removed when a
[`Checkpointer`][rnnjax.checkpoint.Checkpointer] is opened. A step directory that is nevertheless damaged
(files deleted or overwritten) fails the restore or the SHA-256 check;
[`Checkpointer.restore_latest`][rnnjax.checkpoint.Checkpointer.restore_latest] then warns with its path and
step, moves it aside to ``<directory>/../corrupt_checkpoints/`` and falls back to the one before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Checkpointer",
    "CheckpointError",
    "params_sha256",
    "state_from_tree",
    "state_to_tree",
    "tree_sha256",
]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be restored (missing files, wrong structure, checksum mismatch)."""


# ----------------------------------------------------------------------------- hashing


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_bytes(x: Any) -> tuple[str, tuple[int, ...], bytes]:
    if _is_typed_key(x):
        x = jax.random.key_data(x)
    a = np.asarray(jax.device_get(x))
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return str(a.dtype), tuple(a.shape), np.ascontiguousarray(a).tobytes()


def tree_sha256(tree: Any) -> str:
    """SHA-256 (hex) of a pytree's leaves, in the order of their sorted key paths.

    For each leaf, in the order of ``sorted(jax.tree_util.keystr(path))``, the hash is updated with
    the path, the dtype, the shape and the raw little-endian bytes (typed PRNG keys as their
    ``key_data``). Equal digests mean bitwise-equal leaves under equal paths; the digest does not
    depend on device or on how the pytree was built.
    """
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(flat, key=lambda pl: jax.tree_util.keystr(pl[0])):
        dtype, shape, raw = _leaf_bytes(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{dtype}|{shape}|".encode())
        h.update(raw)
    return h.hexdigest()


def params_sha256(params: Any) -> str:
    """SHA-256 of a params pytree (see [`tree_sha256`][rnnjax.checkpoint.tree_sha256]): bitwise-equal params,
    equal digests."""
    return tree_sha256(params)


# ----------------------------------------------------------------------------- state <-> tree


def _key_impl(key: Any) -> Any:
    return jax.random.key_impl(key) if _is_typed_key(key) else None


def state_to_tree(state: Any) -> tuple[dict[str, Any], list[str]]:
    """The leaves of ``state`` as a flat dict for orbax, and their key paths.

    Typed PRNG keys (``jax.random.key``) become their ``key_data`` (``uint32``), which orbax can
    save. Returns ``({"000000": leaf, ...}, [keystr(path), ...])`` in ``tree_flatten`` order.
    """
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves, paths = {}, []
    for i, (path, leaf) in enumerate(flat):
        if _is_typed_key(leaf):
            leaf = jax.random.key_data(leaf)
        # several processes: host NumPy copies (orbax writes them once, from the primary process);
        # the engine passes each process's copy of replicated or gathered arrays
        leaves[f"{i:06d}"] = np.asarray(leaf) if jax.process_count() > 1 else jnp.asarray(leaf)
        paths.append(jax.tree_util.keystr(path))
    return leaves, paths


def state_from_tree(leaves: dict[str, Any], template: Any) -> Any:
    """Inverse of [`state_to_tree`][rnnjax.checkpoint.state_to_tree] on the structure of ``template``.

    Leaves where ``template`` holds a typed key are wrapped back with
    ``jax.random.wrap_key_data`` and the template key's implementation.
    """
    flat, treedef = jax.tree_util.tree_flatten(template)
    if len(leaves) != len(flat):
        raise CheckpointError(f"checkpoint has {len(leaves)} leaves, the template {len(flat)}")
    out = []
    for i, t in enumerate(flat):
        x = leaves[f"{i:06d}"]
        if _is_typed_key(t):
            x = jax.random.wrap_key_data(jnp.asarray(x), impl=_key_impl(t))
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(leaf), jnp.asarray(leaf).dtype)


# ----------------------------------------------------------------------------- manager


class Checkpointer:
    """Synchronous, atomic orbax checkpoints of a TrainState (or any pytree) in one directory.

    Args:
      directory: where step directories ``<step>/`` go (created if missing).
      max_to_keep: keep the newest this many checkpoints (older ones are deleted after a save).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
        import orbax.checkpoint as ocp  # slow import (about 2 s): only when checkpoints are used

        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be a positive int, got {max_to_keep!r}")
        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self._open()

    def _open(self) -> None:
        ocp = self._ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep,
            enable_async_checkpointing=False,  # the save is complete when save() returns
            create=True,
            cleanup_tmp_directories=True,  # remove what a killed save left behind
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    # -- queries

    def steps(self) -> list[int]:
        """The steps of the finalized checkpoints, ascending."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def path(self, step: int) -> Path:
        """The directory of the checkpoint of ``step``."""
        return self.directory / str(int(step))

    # -- save / restore

    def save(self, state: Any, *, step: int | None = None, user_meta: dict[str, Any] | None = None) -> Path:
        """Save ``state`` (any pytree; typed keys allowed) as the checkpoint of ``step``.

        ``step`` defaults to ``int(state.step)``. Synchronous: when this returns the checkpoint is
        on disk and finalized. An existing checkpoint of the same step is replaced.

        Args:
          state: the pytree to save.
          step: the checkpoint's step.
          user_meta: JSON-able values stored in the metadata under ``"user"`` (read back by
            [`restore_latest_matching`][rnnjax.checkpoint.Checkpointer.restore_latest_matching], e.g. to build
            the template of a pytree whose shapes change from save to save).

        Returns:
          The checkpoint's directory.
        """
        ocp = self._ocp
        step = int(state.step if step is None else step)
        leaves, paths = state_to_tree(state)
        meta = {
            "format": FORMAT_VERSION,
            "step": step,
            "paths": paths,
            "dtypes": [str(np.asarray(jax.device_get(v)).dtype) for v in leaves.values()],
            "shapes": [list(np.shape(v)) for v in leaves.values()],
            "sha256": tree_sha256(leaves),
            "saved_at": time.time(),
            "user": user_meta or {},
        }
        if step in self.steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                                         meta=ocp.args.JsonSave(meta)),
                           force=True)
        self._manager.wait_until_finished()
        return self.path(step)

    def restore(self, template: Any, step: int) -> Any:
        """Restore the checkpoint of ``step`` on the structure of ``template`` (checked).

        Raises:
          CheckpointError: the files are missing or damaged, the SHA-256 does not match, or the
            checkpoint holds a different structure (paths, dtypes, shapes) than ``template``.
        """
        return self._restore(template, step, self.meta(step))

    def meta(self, step: int) -> dict[str, Any]:
        """The metadata of the checkpoint of ``step`` (paths, dtypes, shapes, SHA-256, ``user``).

        Raises:
          CheckpointError: it cannot be read.
        """
        path = self.path(step)
        try:
            meta = self._manager.restore(
                step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # any failure of the files is a damaged checkpoint
            raise CheckpointError(f"cannot read the metadata of {path}: {type(e).__name__}: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path} has no rnnjax metadata of format {FORMAT_VERSION}")
        return meta

    def _restore(self, template: Any, step: int, meta: dict[str, Any]) -> Any:
        ocp = self._ocp
        leaves_t, paths_t = state_to_tree(template)
        path = self.path(step)
        shapes_t = [list(np.shape(v)) for v in leaves_t.values()]
        dtypes_t = [str(jnp.asarray(v).dtype) for v in leaves_t.values()]
        if meta["paths"] != paths_t or meta["shapes"] != shapes_t or meta["dtypes"] != dtypes_t:
            saved = [f"{p} {d}{tuple(s)}" for p, d, s in zip(meta["paths"], meta["dtypes"], meta["shapes"])]
            wanted = [f"{p} {d}{tuple(s)}" for p, d, s in zip(paths_t, dtypes_t, shapes_t)]
            diff = [f"saved {a!r} vs template {b!r}" for a, b in zip(saved, wanted) if a != b]
            if len(saved) != len(wanted):
                diff.insert(0, f"{len(saved)} saved leaves vs {len(wanted)} in the template")
            raise ValueError(f"the checkpoint {path} holds a different state structure than the "
                             f"template (a different model or optimizer config?); first "
                             f"differences: {diff[:5]}")
        abstract: dict[str, Any]
        if jax.process_count() > 1:  # restore host copies; the engine places them on the devices
            abstract = {k: np.empty(np.shape(v), np.asarray(v).dtype) for k, v in leaves_t.items()}
        else:
            abstract = {k: _abstract(v) for k, v in leaves_t.items()}
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:
            raise CheckpointError(f"cannot read the arrays of {path}: {type(e).__name__}: {e}") from e
        if tree_sha256(restored) != meta["sha256"]:
            raise CheckpointError(f"{path}: the SHA-256 of the restored arrays does not match the "
                                  f"one recorded at save time (damaged files)")
        return state_from_tree(restored, template)

    def restore_latest(self, template: Any) -> Any | None:
        """Restore the newest checkpoint that reads back intact; None if there is none.

        A checkpoint that fails ([`CheckpointError`][rnnjax.checkpoint.CheckpointError]) is reported with
        ``warnings.warn`` naming its path and step, moved to
        ``<directory>/../corrupt_checkpoints/<step>-<time>`` (so that the resumed run can save that step
        again), and the previous one is tried. A structure mismatch with ``template`` is not skipped: it
        raises ``ValueError``.
        """
        return self.restore_latest_matching(lambda meta: template)

    def restore_latest_matching(self, make_template: Callable[[dict[str, Any]], Any]) -> Any | None:
        """[`restore_latest`][rnnjax.checkpoint.Checkpointer.restore_latest] with the template made from each
        checkpoint's metadata: ``make_template(meta)`` (``meta["user"]`` holds what
        [`save`][rnnjax.checkpoint.Checkpointer.save] was given)."""
        for step in reversed(self.steps()):
            try:
                meta = self.meta(step)
                return self._restore(make_template(meta), step, meta)
            except CheckpointError as e:
                aside = self.directory.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
                warnings.warn(f"skipping the damaged checkpoint {self.path(step)} (step {step}): "
                              f"{e}; moving it to {aside} and trying the previous checkpoint",
                              RuntimeWarning, stacklevel=2)
                aside.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(self.path(step)), str(aside))
                self._manager.close()
                self._open()
        return None

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace`` (atomic)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_npz_atomic(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` as an ``.npz`` file to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    with open(tmp, "wb") as f:
        payload: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
        np.savez(f, **payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_default(o: Any) -> Any:
    """``json.dump``'s ``default`` for NumPy/JAX values (scalars, arrays as lists) and paths."""
    if isinstance(o, (np.generic, jax.Array)) and np.ndim(o) == 0:
        return np.asarray(o).item()
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
