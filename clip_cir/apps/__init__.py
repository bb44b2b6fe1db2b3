"""What users run: the `clip-cir` command line, the quickstart, run reports, hub export and the web demo."""
