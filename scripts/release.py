"""Build the release wheel for a package index, from the project's public address.

A package index shows the README without the repository beside it, so its links to
``docs/...`` and its pictures must be absolute, and the index's page wants ``project.urls``.
Both need the address where the project is published, which only its publisher knows; the
files in the repository keep relative links, which work in a clone and on the repository's
own pages. This script copies the tracked files to a temporary tree, makes the README's
links absolute there and adds ``[project.urls]`` to its ``pyproject.toml``, then builds::

    python scripts/release.py --url https://github.com/OWNER/napari-mtssl --out dist
    make dist URL=https://github.com/OWNER/napari-mtssl

Without an address it refuses, rather than publish links that lead nowhere.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a markdown link or picture whose target is a path inside the repository
LINK = re.compile(r"(!?\[[^\]]*\]\()(?!https?://|#|mailto:)([^)\s]+)(\))")


def absolute_links(markdown: str, url: str, branch: str = "main") -> str:
    """``markdown`` with every repository-relative link made absolute: pictures to their raw
    file, other files to their page on the repository's site (anchors kept)."""
    base = url.rstrip("/")

    def fix(m: re.Match[str]) -> str:
        start, target, end = m.groups()
        kind = "raw" if start.startswith("!") else "blob"
        return f"{start}{base}/{kind}/{branch}/{target.removeprefix('./')}{end}"

    return LINK.sub(fix, markdown)


def with_project_urls(pyproject: str, url: str) -> str:
    """``pyproject.toml`` text with a ``[project.urls]`` table for ``url`` (replacing one)."""
    base = url.rstrip("/")
    table = (
        "[project.urls]\n"
        f'Homepage = "{base}"\n'
        f'Documentation = "{base}/blob/main/docs/tutorial.md"\n'
        f'Issues = "{base}/issues"\n'
    )
    text = re.sub(r"\n\[project\.urls\]\n(?:[^\[\n][^\n]*\n)*", "\n", pyproject)
    return re.sub(r"\n(\[project\.scripts\])", "\n" + table + "\n\\1", text, count=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="", help="the project's public repository address")
    ap.add_argument("--branch", default="main")
    ap.add_argument("--out", default=str(ROOT / "dist"))
    args = ap.parse_args(argv)
    if not re.match(r"https?://\S+$", args.url):
        print(
            "release: give the project's public address (--url https://...): the package "
            "index needs absolute links in the README and project.urls",
            file=sys.stderr,
        )
        return 2
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "napari-mtssl"
        for name in files:
            src = ROOT / name
            if src.is_file() and not src.is_symlink():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tree / name)
            elif src.is_symlink():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                (tree / name).symlink_to(src.readlink())
        readme = tree / "README.md"
        readme.write_text(absolute_links(readme.read_text(), args.url, args.branch))
        pyproject = tree / "pyproject.toml"
        pyproject.write_text(with_project_urls(pyproject.read_text(), args.url))
        out.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
            cwd=tree,
        )
        if built.returncode:
            return built.returncode
    print(f"release: wheel in {out} with absolute links to {args.url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
