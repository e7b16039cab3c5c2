"""Embedded default data: synthetic chest and abdominal CT phantoms in HU, with lesion injection."""

from .lesions import KINDS, LUNG_KINDS, SOFT_TISSUE_KINDS, inject_lesions, kinds_for
from .synthetic import LABELS, REGIONS, Phantom, make_phantom, organ_mask, write_phantom_set

__all__ = ["KINDS", "LABELS", "LUNG_KINDS", "REGIONS", "SOFT_TISSUE_KINDS", "Phantom", "inject_lesions",
           "kinds_for", "make_phantom", "organ_mask", "write_phantom_set"]
