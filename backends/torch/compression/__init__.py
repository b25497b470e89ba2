"""Gradient compression that really saves bytes on the wire, split as GRACE splits it: a compressor (the
method's rule), a memory (none, or error feedback) and an encoding (the message as bytes), joined by a codec.

The training protocol builds one codec per rank and calls, every step::

    codec = make_codec("topk", engine.layout, mode="layerwise", ratio=0.01, error_feedback=True,
                       seed=seed, rank=rank)
    payload = codec.encode(flat_grad, step)           # uint8 numpy array, this rank's message
    payloads = comm.allgather_bytes(payload)          # every rank's, variable sizes, empty allowed
    update = codec.decode_mean(payloads)              # float32 (n,): sum of decoded gradients / world size

`len(payload)` is the bytes sent; `codec.dense_nbytes` the dense float32 baseline. `bench.bench_codecs` is the
per-method study behind `anytimectl compress bench`. Communication is not here: the comm layer moves bytes.
"""

from .codec import HEADER_BYTES, MODES, Codec, canonical_mode, make_codec, segments
from .compressors import (
    DEFAULTS,
    VALUE_DTYPES,
    Compressor,
    Draws,
    canonical_method,
    compressor_class,
    make_compressor,
    method_names,
    random_indices,
    register,
)
from .memory import ErrorFeedback, Memory, NoMemory, make_memory
from .messages import Dense, Levels, Message, Sparse, to_dense

__all__ = [
    "DEFAULTS", "HEADER_BYTES", "MODES", "VALUE_DTYPES", "Codec", "Compressor", "Dense", "Draws", "ErrorFeedback",
    "Levels", "Memory", "Message", "NoMemory", "Sparse", "canonical_method", "canonical_mode", "compressor_class",
    "make_codec", "make_compressor", "make_memory", "method_names", "random_indices", "register", "segments",
    "to_dense",
]
