"""`python -m accord.coordinator` is the `accord` command."""

from accord.coordinator.cli import app

app()
