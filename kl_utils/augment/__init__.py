"""Augmentation of documents: the formatting families (facts protected, each edit recorded) and their
audit (fact preservation, statistics)."""
