"""Augmentation of documents. Modules, each importing only those before it:

  sentences   sentence segmentation (never changes a character; protected strings never cut)
  formatting  the formatting families (facts protected, each edit recorded) and their exact inverse
  rewriting   the rewriting baselines: paraphrases, sentence permutation, EDA
  fact_audit  the fact-preservation audit of all of them, and its command line
  audit       notebook 03's sample, examples, statistics, tables and run records
"""
