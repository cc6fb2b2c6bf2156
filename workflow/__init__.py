"""The Snakemake workflow of the MOSAIC harness: rules, configs, job adapters and their library."""
