"""The study's data: people and their biographies (the bioS generator), documents and their formats
(reading, layouts, validation), the tokenizer, and the datasets training reads. files/ holds the
packaged data (bioS field lists, a Wiki2023 sample)."""
