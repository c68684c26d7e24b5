"""Data layer: the normalized expression index every dataset produces."""

from vgkit.data.index import BOX_CONVENTION, DatasetIndex, Record

__all__ = ["BOX_CONVENTION", "DatasetIndex", "Record"]
