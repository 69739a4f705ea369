"""datagraph: a personal data-analysis server behind one GraphQL API."""

__version__ = "0.1.0"
