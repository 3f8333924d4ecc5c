"""Device mesh, shardings and multi-host start-up.

One 2-D mesh over every device of every process, with the axes ``('replica', 'data')``.
Batches are split along ``'data'``; parameters are replicated (or, with ``fsdp``, their largest
divisible dimension is split along ``'data'`` too). The ``'replica'`` axis has one device except
for a population trained with ``train.replica_devices=R > 1``: its replicas are split over the R
rows of the mesh while each row splits the batch over its own devices. `jax.jit` with these
`NamedSharding`s does the rest; there is no pmap.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
REPLICA_AXIS = "replica"
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


def make_mesh(devices: list[jax.Device] | None = None, replica_devices: int = 1) -> Mesh:
    """A (`replica_devices`, rest) mesh with axes ('replica', 'data') over `devices` (default:
    all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    if replica_devices < 1 or len(devices) % replica_devices:
        raise ValueError(f"config.train.replica_devices={replica_devices} must be >= 1 and "
                         f"divide the number of devices ({len(devices)})")
    grid = np.asarray(devices).reshape(replica_devices, len(devices) // replica_devices)
    return Mesh(grid, (REPLICA_AXIS, DATA_AXIS))


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
    """Shardings of a population's train state (leading replica axis on every leaf): split over
    the mesh's 'replica' axis when it has several devices; otherwise over 'data' when the
    number of replicas divides evenly, else replicated."""
    axis = REPLICA_AXIS if mesh.shape[REPLICA_AXIS] > 1 else DATA_AXIS
    num_shards = mesh.shape[axis]

    def one(leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        split = num_shards > 1 and bool(shape) and shape[0] % num_shards == 0
        return NamedSharding(mesh, PartitionSpec(axis) if split else PartitionSpec())

    return jax.tree.map(one, abstract_state)


def population_batch_spec(mesh: Mesh, per_replica: bool) -> PartitionSpec:
    """Where a population's train batch goes: a shared batch (B, ...) splits over 'data' (a
    copy per mesh row); per-replica batches (K, B, ...) split K over 'replica' and B over
    'data' on a 2-D mesh, K over 'data' on a 1-row one."""
    if per_replica and mesh.shape[REPLICA_AXIS] > 1:
        return PartitionSpec(REPLICA_AXIS, DATA_AXIS)
    return PartitionSpec(DATA_AXIS)


def check_batch_size(batch_size: int, mesh: Mesh, where: str) -> int:
    """The per-process share of a global batch; it must split evenly over the 'data' axis."""
    num_devices = mesh.shape[DATA_AXIS]
    if batch_size % num_devices:
        raise ValueError(
            f"{where}={batch_size} must be divisible by the number of devices ({num_devices}) "
            f"that split a batch"
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
