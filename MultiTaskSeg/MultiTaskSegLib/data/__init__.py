"""Training data that ships or is made here: procedural phantoms, the brain templates and atlases
the packages hold, and ``make-data``, which writes them as training datasets."""
