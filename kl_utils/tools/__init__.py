"""Tooling around the study: speed benchmarks, the GPU plan of the paper profile, notebook
housekeeping and make reproduce."""
