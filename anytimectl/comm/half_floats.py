"""16-bit floats (float16, bfloat16) carried as their uint16 bits: conversion from and to float32, and the
correctly rounded addition that MPI lacks (it has no bfloat16 and no float16 sum everywhere), which the MPI
transport's `allreduce_sum16` runs as a user-defined operation.

An addition in the 16-bit type is done as float32 addition rounded once to the type: for fp16 (11-bit
significand) and bf16 (8) against float32's 24, 24 >= 2p + 2, so the double rounding is exact and the result is
the correctly rounded 16-bit sum.
"""

from __future__ import annotations

import numpy as np

KINDS = ("float16", "bfloat16")


def to_words(values: np.ndarray, kind: str) -> np.ndarray:
    """float32 -> the 16-bit type's bits (uint16), rounded to nearest even (torch's conversion; NaN stays NaN)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if kind == "float16":
        with np.errstate(over="ignore"):  # beyond 65504 is inf, as torch's cast
            return values.astype(np.float16).view(np.uint16)
    bits = values.view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    words = rounded.astype(np.uint16)
    words[np.isnan(values)] = 0x7FC0
    return words


def from_words(words: np.ndarray, kind: str) -> np.ndarray:
    """The 16-bit type's bits (uint16) -> float32 (exact)."""
    words = np.ascontiguousarray(words, dtype=np.uint16)
    if kind == "float16":
        return words.view(np.float16).astype(np.float32)
    return (words.astype(np.uint32) << np.uint32(16)).view(np.float32)


def add_words(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """a + b in the 16-bit type (correctly rounded; see the module docstring)."""
    return to_words(from_words(a, kind) + from_words(b, kind), kind)
