"""fastfog: a high-throughput egress proxy, a drop-in replacement for Smokescreen."""

__version__ = "0.1.0"
