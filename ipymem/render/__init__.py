"""Results to text and HTML: pure functions, no printing, no IPython.

Every renderer takes a result (and display options such as precision) and
returns a string.  HTML is self-contained: inline styles, escaped user text,
no script, so it survives notebook sanitising and nbconvert.
"""

from .alloc import alloc_html, alloc_text
from .compare import compare_html, compare_text
from .lines import mprun_html, mprun_text
from .memit import memit_html, memit_text
from .memwho import memwho_html, memwho_text

__all__ = [
    "alloc_html",
    "alloc_text",
    "compare_html",
    "compare_text",
    "memit_html",
    "memit_text",
    "memwho_html",
    "memwho_text",
    "mprun_html",
    "mprun_text",
]
