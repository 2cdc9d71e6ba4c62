"""Narrow filters for warnings that TorchRec, FBGEMM and PyTorch print on every run although nothing is wrong.

Each filter names one message from one library and says why it is safe to hide; anything else still shows.
Warnings the project itself caused are fixed where they arise instead (planner topology and storage
reservation, gradient layout of per-token weights, read-only NumPy buffers). Called once per process by the
``ranker`` command and by every training rank.
"""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


_installed = False


def silence_known_library_noise() -> None:
    """Installs the filters below (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    # TorchRec logs this for every data-parallel table whether or not caching parameters were given (we give none).
    logging.getLogger("torchrec.distributed.utils").addFilter(_DropMessages("Sharding Type is data_parallel, caching"))
    # The planner's plan check logs this for every data-parallel table: such tables have no sharding spec by design;
    # TorchRec logs the second on every export of a model whose embedding bags take a KeyedJaggedTensor (all of ours):
    # it is about tracing speed, a few seconds once per export (ranker/serving.py), not about the program.
    logging.getLogger().addFilter(
        _DropMessages("Sharding spec not found for ", "Trying to non-strict torch.export KJT to_dict")
    )
    # TorchRec's own DistributedDataParallel wrappers still pass the deprecated argument; nothing for us to change.
    warnings.filterwarnings(
        "ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning, module=r"torchrec\."
    )
    # FBGEMM registers its CPU dense (data-parallel) lookup under the CPU key and records the backward inside it,
    # so PyTorch warns that gradients "may" be wrong. They are not: tests/ranker/test_sharding_parity.py checks
    # data-parallel tables after a step against a row-by-row reference, for sgd, adagrad and row-wise Adagrad.
    warnings.filterwarnings(
        "ignore",
        message="fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
        category=UserWarning,
        module=r"torch\.autograd\.graph",
    )
    # PyTorch's note to TorchRec about an API it calls while building KeyedJaggedTensors.
    logging.getLogger("torch.fx._symbolic_trace").addFilter(_DropMessages("is_fx_tracing will return true"))
    # Inductor's CPU compiler probes for CUDA on every `torch.compile` (training's `compile: true`): on a CPU-only
    # machine it says it found none, which is the expected state, not a problem.
    logging.getLogger("torch.utils.cpp_extension").addFilter(_DropMessages("No CUDA runtime is found"))
