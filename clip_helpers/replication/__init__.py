"""Replicating the report: its code as published, `make reproduce`, and the rehearsal's stand-ins."""
