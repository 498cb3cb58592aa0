"""Dagster software-defined assets, one factory per layer, partitions in their own module."""
