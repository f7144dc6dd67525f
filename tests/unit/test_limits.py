"""Caps that hold: out-of-memory failures recognised whatever raised them (the CPU allocator under a real
cap, the CUDA caching allocator, cuBLAS/cuDNN allocating outside it), a fractional GPU cap that counts the
CUDA context, and the retry decision: a trial that ran out of memory is not run again."""

from __future__ import annotations

import pytest
import torch

from hpo.engine._private_api import retry_rule
from hpo.engine.limits import (
    CUDA_CONTEXT_RESERVE,
    TrialOutOfMemory,
    allocator_fraction,
    is_out_of_memory,
    memory_cap,
    out_of_memory_as_infeasible,
)
from hpo.engine.trial_book import error_text, may_retry


def test_a_real_allocation_over_the_cpu_cap_is_out_of_memory():
    with pytest.raises(RuntimeError) as raised, memory_cap(64 * 2**20, None, "cpu"):
        torch.empty(512 * 2**20, dtype=torch.uint8)  # 512 MiB under a 64 MiB cap: RLIMIT_DATA refuses it
    assert "can't allocate memory" in str(raised.value), raised.value  # torch's CPU allocator says so
    assert is_out_of_memory(raised.value)
    torch.empty(512 * 2**20, dtype=torch.uint8)  # the cap is gone after the block


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 15.77 GiB"
        ),
        # allocated by cuBLAS outside PyTorch's allocator: a plain RuntimeError from torch's CUDA checks
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("cuFFT error: CUFFT_ALLOC_FAILED"),
        # the CUDA runtime's own (a context or workspace that does not fit), as torch raises it
        torch.AcceleratorError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    ],
    ids=["MemoryError", "OutOfMemoryError", "cuBLAS", "cuDNN", "cuFFT", "AcceleratorError"],
)
def test_gpu_and_library_allocation_failures_are_out_of_memory(exc):
    assert is_out_of_memory(exc)


@pytest.mark.parametrize(
    "exc",
    [
        FloatingPointError("training loss became nan in epoch 1"),
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"),
        RuntimeError("CUDA error: no kernel image is available for execution on the device"),
        ValueError("out of range"),
    ],
)
def test_other_failures_are_not(exc):
    assert not is_out_of_memory(exc)


def test_an_error_raised_from_an_out_of_memory_is_one():
    try:
        try:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        except RuntimeError as inner:
            raise RuntimeError("the training step failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)


def test_out_of_memory_becomes_an_infeasible_trial_and_nothing_else_does():
    expected = r"out of memory with batch size 512 on cuda, capped at 1\.0 GiB \(cuDNN"
    with pytest.raises(TrialOutOfMemory, match=expected), out_of_memory_as_infeasible(512, "cuda", "1.0 GiB"):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
    with pytest.raises(FloatingPointError), out_of_memory_as_infeasible(512, "cpu"):
        raise FloatingPointError("training loss became nan in epoch 1")


def test_a_fractional_cap_counts_the_cuda_context():
    total = 16 * 2**30
    fraction = allocator_fraction(0.25, total)
    assert fraction == pytest.approx(0.25 - CUDA_CONTEXT_RESERVE / total)
    # four trials at 0.25: allocators and contexts together fit the card
    assert 4 * (fraction * total + CUDA_CONTEXT_RESERVE) <= total
    with pytest.raises(TrialOutOfMemory, match="leaves nothing beside the 768 MiB a CUDA context takes"):
        allocator_fraction(0.04, total)


def test_a_trial_that_ran_out_of_memory_is_not_retried_and_other_failures_are():
    oom = error_text("hpo.engine.limits.TrialOutOfMemory: out of memory with batch size 1000 on cpu")
    assert not may_retry(oom)
    assert may_retry("InjectedFault: injected fault for lr=0.02")
    assert may_retry("FloatingPointError: training loss became nan in epoch 2")
    assert may_retry(error_text("The actor died unexpectedly: worker process has died"))  # the OOM killer, or not


def test_ray_tune_asks_the_retry_rule_besides_its_own_count():
    from ray.tune.experiment import Trial

    oom, flaky = (Trial("__fake", stub=True, max_failures=2, trial_id=i) for i in ("oom", "flaky"))
    for trial in (oom, flaky):
        trial.run_metadata.num_failures = 1  # as Trial.handle_error leaves it after a first failure
    with retry_rule(lambda trial: trial.trial_id != "oom"):
        assert not oom.should_recover() and flaky.should_recover()
        flaky.run_metadata.num_failures = 3  # past max_failures: Ray's own count still decides
        assert not flaky.should_recover()
    assert oom.should_recover()  # Ray's rule alone once the block ends


def _node_lost(kind: str) -> BaseException:
    """What Ray raises in the driver for a trial whose node went away (its processes and raylet killed):
    the actor's connection dropped, or the actor or its node declared dead, or the node preempted."""
    import ray.exceptions as rex
    from ray.core.generated.common_pb2 import ActorDiedErrorContext

    actor = "01" * 16
    if kind == "unavailable":
        message = "The actor is temporarily unavailable: RpcError: RPC error: Socket closed rpc_code: 14."
        return rex.ActorUnavailableError(message, bytes.fromhex(actor))
    if kind == "actor died with its node":
        died = "The actor died because its node has died. Node Id: 5e0c"
        context = ActorDiedErrorContext(error_message=died, node_ip_address="127.0.0.2", actor_id=bytes.fromhex(actor))
        return rex.ActorDiedError(context)
    if kind == "node died":
        return rex.NodeDiedError("Node 5e0c died")
    return rex.RayActorError(actor, preempted=True)


@pytest.mark.parametrize("kind", ["unavailable", "actor died with its node", "node died", "preempted"])
def test_a_trial_whose_node_was_lost_is_retried(kind):
    """Preemption: the same trial may well run on another node (failures.retries), unlike one that ran out
    of memory (above). The error as the driver words it: type and first line (hpo.engine.ray_callbacks)."""
    exc = _node_lost(kind)
    error = error_text(f"{type(exc).__name__}: {exc}".splitlines()[0])
    assert may_retry(error), error
    if kind in ("unavailable", "node died"):  # what the driver saw when a test killed a worker node
        assert error.startswith("TrialNodeLost: the trial's node, or the connection to it, was lost"), error
    assert may_retry(error_text(str(exc).splitlines()[-1])), str(exc)  # a lost process's error: its last line


def test_an_out_of_memory_mentioning_a_lost_node_is_still_not_retried():
    error = error_text("TrialOutOfMemory: out of memory with batch size 64 on cpu (NodeDiedError in the log)")
    assert error.startswith("TrialOutOfMemory") and not may_retry(error)
