"""What users run on top of the library: the quickstart, the web page, the drawing animation."""

__all__ = ["animate", "quickstart", "quickstart_config", "serve"]
