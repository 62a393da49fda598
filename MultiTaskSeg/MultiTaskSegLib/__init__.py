"""MultiTaskSeg engine: one multi-task triplanar CNN (Moeskops et al. 2017) for
brain tissues in T1 MRI, the pectoral muscle in breast MRI and coronary arteries in CTA.

No Qt and no Slicer GUI here: everything imports outside Slicer.
"""

__version__ = "0.1.0"
