"""A local input or output must be on a disk that every node of the cluster shares (NFS or
another shared mount); otherwise a node reads nothing, or writes rows to a disk that goes
with it when the autoscaler removes it. The driver's own disk cannot tell, so the nodes are
asked: at the start, one task on every node that is up looks for the run's claim (`run.json`)
and for each input file at its listed size; then each worker process that writes batches
looks for the claim where it writes, for the nodes the autoscaler adds later."""

from __future__ import annotations

import logging
import os

import pyarrow as pa

from alpagasus_ray.core.errors import StorageNotShared
from alpagasus_ray.core.runtime import node_name, this_node
from alpagasus_ray.data.io import RUN_MARKER, is_local, join
from alpagasus_ray.data.listing import Listing

log = logging.getLogger(__name__)

NODES_WAIT_S = 300.0  # a node that cannot start a task in this long is left to the writes
_SEEN_HERE: set[str] = set()  # the outputs whose claim this worker process has seen


def unseen(root: str | None, sizes: dict[str, int]) -> tuple[str, str] | None:
    """What this node cannot see of the run's local storage, as (key, path); None if all.
    The output is unseen when it holds no claim here: a claim of another run is a run that
    took the output over, which `check_claim` refuses at the end, not a disk this node lacks
    (and the write must go on for it, as it did before this check)."""
    if root is not None and not os.path.isfile(join(root, RUN_MARKER)):
        return "output.uri", root
    for path, size in sizes.items():
        try:
            if os.stat(path).st_size != size:
                return "input.uri", path
        except OSError:
            return "input.uri", path
    return None


def local_sizes(listing: Listing) -> dict[str, int]:
    """The input files' sizes when they are local, which every node must then see alike."""
    fs, files = listing.fs, listing.files
    return {path: fs.size(path) for path in files} if is_local(fs) else {}


def check_nodes_see(root: str | None, sizes: dict[str, int]) -> None:
    """Refuse, naming the first node that cannot see the output's claim or an input file;
    `root` None when the output is not local, `sizes` empty when the input is not."""
    if root is None and not sizes:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    look = ray.remote(num_cpus=0, max_retries=0)(unseen)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    sizes_ref = ray.put(sizes)
    refs = [
        look.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(root, sizes_ref)
        for n in nodes
    ]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=NODES_WAIT_S)
    for node, ref in zip(nodes, refs, strict=True):
        if ref not in ready:
            log.warning("node %s did not answer the storage check", node["NodeID"][:12])
            continue
        try:
            problem = ray.get(ref)
        except ray.exceptions.RayError:  # the node went meanwhile: it reads or writes nothing
            continue
        if problem:
            key, path = problem
            raise StorageNotShared(key, path, node_name(node["NodeID"], node["NodeManagerAddress"]))


class OnSharedDisk:
    """A pass-through stage just before the write (fused with it, so it runs where the batch
    is written): a node that does not see the run's claim fails the job in one line instead
    of writing rows that the output would never hold."""

    def __init__(self, root: str):
        self.root = root

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.root not in _SEEN_HERE:  # once per worker process
            if unseen(self.root, {}) is not None:
                raise StorageNotShared("output.uri", self.root, this_node())
            _SEEN_HERE.add(self.root)
        return table
