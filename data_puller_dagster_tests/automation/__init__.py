"""Tests of the gap-filling sensors (issue 8)."""
