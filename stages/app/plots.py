"""The HTML template `dvc plots show/diff` fill, with vega, vega-lite and vega-embed inline: offline plots.

DVC's default page loads those three libraries from a CDN, so offline every interactive chart was
blank, without a message. The template carries them instead, taken from the installed
vl-convert-python package (pinned in constraints.txt; `vl_convert.javascript_bundle` returns the
three libraries as one script), and omits DVC's `{scripts}` placeholder, where DVC would put its
CDN tags back. `make install` writes it to TEMPLATE; .dvc/config points `plots.html_template` at it.

    python -m stages.app.plots            # (re)write .dvc/plots_offline.html
"""
from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = Path(".dvc") / "plots_offline.html"
VEGA_LITE = "5.21"        # DVC's plot templates are Vega-Lite v5 specs

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<!-- vega __VEGA__, vega-lite __VEGA_LITE__, vega-embed __EMBED__: from vl-convert-python __VLC__, inline (offline) -->
<script>__BUNDLE__</script>
<style>
body{font:14px system-ui,sans-serif;margin:16px 24px;color:#1d2433}
body>div{display:inline-block;vertical-align:top;margin:0 24px 24px 0}
table{border-spacing:15px}
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def template_html() -> str:
    """The page: DVC's placeholders {plot_divs} and {refresh_tag}, the libraries inline."""
    from importlib.metadata import version

    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    # DVC fills placeholders by plain text replacement over the whole page, scripts included; an
    # inline script must not hold "</script" either.
    for marker in ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script"):
        if marker in bundle:
            raise RuntimeError(f"the vl-convert bundle holds {marker!r}: it cannot be inlined as is")
    return (PAGE.replace("__VEGA__", vl_convert.get_vega_version())
            .replace("__VEGA_LITE__", VEGA_LITE).replace("__EMBED__", vl_convert.get_vega_embed_version())
            .replace("__VLC__", version("vl-convert-python")).replace("__BUNDLE__", bundle))


def write_template(path: Path = TEMPLATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(template_html(), encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = write_template(Path(args[0]) if args else TEMPLATE)
    print(f"plots: {path} ({path.stat().st_size / 1e6:.1f} MB; vega, vega-lite, vega-embed inline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
