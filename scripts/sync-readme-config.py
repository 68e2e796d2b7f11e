"""Rewrite the README's configuration reference from the settings classes."""

import re
from pathlib import Path

from tickcast.settings import reference_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
pattern = re.compile(r"(<!-- BEGIN CONFIG REFERENCE.*?-->\n).*?(\n<!-- END CONFIG REFERENCE -->)", re.S)
readme.write_text(pattern.sub(lambda m: m.group(1) + reference_markdown() + m.group(2), text))
