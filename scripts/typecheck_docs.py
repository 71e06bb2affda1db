"""Type-check the docs' Python examples with ``mypy --strict`` (run by ``nox -s typecheck``).

Each page's runnable blocks (the same ones ``tests/test_docs.py`` runs) are joined in order
into one module, as they run in one namespace; pytest modules (``:caption: test_*.py``) are
checked as their own modules. Libraries without type information (jwcrypto) count as Any.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_docs  # noqa: E402  (the extractor lives with the docs tests)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hsmkey-doc-types-") as tmp:
        out = Path(tmp)
        for page in test_docs.pages():
            blocks, _ = test_docs.extract(page)
            code = [b for b in blocks if b.language in test_docs.PYTHON_LANGS]
            pages = [b.code for b in code if not b.caption]
            if pages:
                (out / f"doc_{page.stem}.py").write_text("\n".join(pages))
            for b in code:
                if b.caption:
                    (out / f"doc_{page.stem}_{Path(b.caption).name}").write_text(b.code)
        files = sorted(str(p) for p in out.glob("*.py"))
        print(f"type-checking the examples of {len(files)} doc modules")
        mypy = [sys.executable, "-m", "mypy", "--strict", "--ignore-missing-imports"]
        return subprocess.call([*mypy, "--python-version", "3.10", *files], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
