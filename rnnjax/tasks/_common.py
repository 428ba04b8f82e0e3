"""Argument checks shared by the task generators (private): those of `rnnjax._checks`."""

from rnnjax._checks import check_int, check_key

__all__ = ["check_int", "check_key"]
