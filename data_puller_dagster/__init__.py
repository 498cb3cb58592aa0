"""data-puller-dagster: orchestrated market-data ETL on Dagster.

Stages, in the order data flows: sources -> transform -> assets -> io -> automation;
`config` reads data_puller.yaml and `definitions` assembles the Dagster code location.
"""

__version__ = "0.1.0"
