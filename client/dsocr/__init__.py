"""dsocr: the DeepSeek-OCR service's command-line client (httpx, typer and rich only)."""

__version__ = "0.1.0"
