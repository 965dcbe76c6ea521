"""A live auction: see README.md in this folder."""
