"""Inference only: the network, its dense whole-volume pass, and everything a segmentation needs
from an image file or array to a labelmap. Imports nothing from the other sub-packages."""
