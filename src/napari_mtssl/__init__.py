"""napari-mtssl: segmentation from few labels by two-stage multi-task self-supervised learning.

Kept light on purpose: napari imports this package whenever it resolves one of our commands, so
nothing heavy (torch, Qt) is imported here. Use :mod:`napari_mtssl.api` for the engine.
"""

__version__ = "0.1.0"
