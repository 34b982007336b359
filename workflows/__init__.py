"""Nipype workflow factories of qsmprep (installed as ``qsmprep.workflows``)."""

from pathlib import Path


def memory_gb(voxel_count: int, copies: float) -> float:
    """Nipype ``mem_gb`` hint of a node holding ``copies`` float32 volumes of ``voxel_count``
    voxels, plus 0.2 GB for the Python process."""
    return round(0.2 + voxel_count * 4 * copies / 1024**3, 2)


def all_nodes(workflow) -> list:
    """Every node of ``workflow``, its sub-workflows' included (through nipype's public
    ``list_node_names`` and ``get_node``)."""
    return [workflow.get_node(name) for name in workflow.list_node_names()]


#: The array-job script that runs one participant per SLURM array task (installed with the
#: package; see the README's "Running on a cluster").
SLURM_ARRAY_SCRIPT = Path(__file__).resolve().with_name("slurm_array.sh")
