"""mkdocs hook: the committed figures (``results/figures/*.png``) join the site under the same path, so the pages
link them where they are (``results/figures/figure2-mnist.png``) and ``mkdocs build --strict`` checks those links."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    for png in sorted((ROOT / "results" / "figures").glob("*.png")):
        files.append(File(str(png.relative_to(ROOT)), str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
