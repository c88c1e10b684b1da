"""The offline page template of `dvc plots show/diff`: the three libraries inline, DVC's CDN tags kept out,
and the project's DVC config naming it (the drawing itself: tests/pipeline/test_readme_loop.py)."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

from conftest import REPO
from stages.app.plots import TEMPLATE, main, template_html


def test_template_holds_the_libraries_and_no_cdn():
    page = template_html()
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page                        # where DVC would put its CDN <script> tags
    assert not re.search(r"<script[^>]+src=", page)       # nothing fetched: one inline script
    assert "window.vegaEmbed=" in page and "window.vegaLite=" in page and "window.vega=" in page
    assert page.count("</script>") == 1


def test_dvc_config_names_the_template_make_install_writes(tmp_path: Path):
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".dvc" / "config")
    assert REPO / ".dvc" / cfg["plots"]["html_template"] == REPO / TEMPLATE
    assert ".dvc/plots_offline.html: $(VENV)/.installed" in (REPO / "Makefile").read_text()
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/.dvc/plots_offline.html" in ignored and "/dvc_plots/" in ignored
    assert main([str(tmp_path / "t.html")]) == 0 and (tmp_path / "t.html").read_text() == template_html()
