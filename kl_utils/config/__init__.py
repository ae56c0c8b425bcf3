"""What a run is, as data (no torch): the profile schema (every key, its check and its default),
profile loading, the arms a profile defines and each run's id."""
