"""Device mesh, shardings and multi-host start-up.

One 1-D mesh over every device of every process, with the axis ``'data'``: batches are split
along it, parameters are replicated (or, with ``fsdp``, their largest divisible dimension is
split along it too). `jax.jit` with these `NamedSharding`s does the rest; there is no pmap.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
# Arrays smaller than this stay replicated under FSDP: splitting them saves nothing.
FSDP_MIN_SIZE = 2**14


def maybe_initialize_distributed(train_config: Any) -> None:
    """Calls `jax.distributed.initialize` when `train_config.distributed` is set.

    With `coordinator_address` unset, JAX detects the cluster (SLURM, Open MPI, TPU pods);
    otherwise the explicit address, `num_processes` and `process_id` are used. Safe to call
    twice: a second call in an initialised process does nothing.
    """
    if not train_config.distributed or jax.distributed.is_initialized():
        return
    if train_config.coordinator_address:
        if train_config.num_processes is None or train_config.process_id is None:
            raise ValueError(
                "config.train.coordinator_address is set, so config.train.num_processes and "
                "config.train.process_id must be set too"
            )
        jax.distributed.initialize(
            coordinator_address=train_config.coordinator_address,
            num_processes=int(train_config.num_processes),
            process_id=int(train_config.process_id),
        )
    else:
        jax.distributed.initialize()


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', everything else whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], num_shards: int) -> PartitionSpec:
    """Splits the largest dimension divisible by `num_shards`; small or indivisible: replicated."""
    if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return PartitionSpec()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for axis in order:
        if shape[axis] % num_shards == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool = False) -> Any:
    """A pytree of `NamedSharding`s for a (train) state given as shape/dtype structs."""
    num_shards = mesh.shape[DATA_AXIS]

    def one(leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        spec = fsdp_spec(shape, num_shards) if fsdp else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_state)


def population_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """Shardings of a population's train state (leading replica axis on every leaf): the
    replicas split over the devices when their number divides evenly, else replicated."""
    num_shards = mesh.shape[DATA_AXIS]

    def one(leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        split = num_shards > 1 and bool(shape) and shape[0] % num_shards == 0
        return NamedSharding(mesh, PartitionSpec(DATA_AXIS) if split else PartitionSpec())

    return jax.tree.map(one, abstract_state)


def check_batch_size(batch_size: int, mesh: Mesh, where: str) -> int:
    """The per-process share of a global batch; it must split evenly over devices."""
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        raise ValueError(
            f"{where}={batch_size} must be divisible by the number of devices ({num_devices})"
        )
    return batch_size // jax.process_count()


def fetch(tree: Any) -> Any:
    """Host NumPy copies of a pytree of (possibly multi-host, sharded) arrays.

    Arrays that live on this process's devices alone are copied as they are; global arrays
    spanning several processes are gathered from all of them (a collective: every process
    must call this with the same tree).
    """
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
