"""The Slicer side: MRML logic (volume node in, segmentation node out) and dependency checks.
Imports only the engine, so a Slicer session never loads the training code."""
