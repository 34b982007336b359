"""Nipype workflow factories of qsmprep (installed as ``qsmprep.workflows``)."""


def memory_gb(voxel_count: int, copies: float) -> float:
    """Nipype ``mem_gb`` hint of a node holding ``copies`` float32 volumes of ``voxel_count``
    voxels, plus 0.2 GB for the Python process."""
    return round(0.2 + voxel_count * 4 * copies / 1024**3, 2)
