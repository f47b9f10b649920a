"""The package version, in a module of its own: modules that report it (the User-Agent,
the output's metadata) import it from here, never from the package facade."""

__version__ = "0.1.0"
