"""From records to results: claims and their verdicts, figures and tables, REPORT.md, comparison of a
reproduction with the committed records."""
