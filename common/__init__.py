"""The pure core shared by the linkage server, the terminal agent and provisioning.

Importing this package registers the ``"juki"`` text codec (住基統一文字コード),
so ``"辻".encode("juki")`` works after ``import common``.
"""

from . import juki  # noqa: F401  (registers the "juki" codec)
