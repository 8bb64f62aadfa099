"""PhantomCXR: synthetic chest radiographs from a procedural 3-D thorax.

:func:`render_study` renders one study in memory; ``cxr_models.phantom.generate`` writes a
dataset in the SIIM-FISABIO-RSNA layout (``python -m cxr_models.phantom.generate``).
"""

from cxr_models.phantom.study import PhantomImage, PhantomStudy, render_study

__all__ = ["PhantomImage", "PhantomStudy", "render_study"]
