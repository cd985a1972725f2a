"""For tools that still run `python setup.py ...`: the package's metadata and build settings
live in pyproject.toml, which setuptools reads; `pip install .` works with or without this."""
from setuptools import setup

setup()
