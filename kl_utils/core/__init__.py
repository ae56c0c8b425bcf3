"""The bottom layer, needed by every other: paths, run records (atomic writes, provenance), config
hashing, the command-line error convention. Imports no other layer."""
