"""Schedules and sensors that run the pipeline by itself."""
