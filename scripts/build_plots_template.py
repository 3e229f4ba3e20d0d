"""Build ``.dvc/plots/offline.html``: a DVC plots template with Vega inlined (no CDN).

``dvc plots show`` writes an HTML page whose default template loads Vega, Vega-Lite and
Vega-Embed from a CDN, so the page is blank without internet. This script fetches the
same three libraries from the npm registry (``npm pack``, which checks each tarball's
integrity), and writes a template that carries their minified builds inline; DVC fills
its ``{plot_divs}`` placeholder. ``.dvc/config`` points ``plots.html_template`` at it.
The libraries' licences go to ``.dvc/plots/LICENSES.txt``.

Usage: ``python scripts/build_plots_template.py`` (needs ``npm``; the result is committed).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fdd.files import atomic_write_bytes  # noqa: E402  (after the repository root joins sys.path)

# the versions dvc-render's default template loads from the CDN
PACKAGES = (
    ("vega", "5.20.2", "build/vega.min.js"),
    ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
    ("vega-embed", "6.18.2", "build/vega-embed.min.js"),
)
OUT = ROOT / ".dvc/plots/offline.html"
LICENSES = ROOT / ".dvc/plots/LICENSES.txt"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots (offline)</title>
    <!-- {versions}: inlined from the npm registry by scripts/build_plots_template.py; licences in LICENSES.txt -->
{libraries}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}@{version}" for name, version, _ in PACKAGES]
        subprocess.run(["npm", "pack", "--silent", *specs], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        scripts, licences = [], []
        for name, version, member in PACKAGES:
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as archive:
                code = archive.extractfile(f"package/{member}").read().decode("utf-8")
                licence = archive.extractfile("package/LICENSE").read().decode("utf-8")
            if "</script" in code or "{plot_divs}" in code:
                raise ValueError(f"{name} {member} cannot be inlined (it contains '</script' or '{{plot_divs}}')")
            scripts.append(f"    <script>/* {name} {version} */\n{code}\n    </script>")
            licences.append(f"{name} {version}\n{'=' * 40}\n{licence}\n")
    page = PAGE.replace("{{", "{").replace("}}", "}")
    page = page.replace("{versions}", ", ".join(f"{n} {v}" for n, v, _ in PACKAGES)).replace(
        "{libraries}", "\n".join(scripts)
    )
    atomic_write_bytes(OUT, page.encode("utf-8"))
    atomic_write_bytes(LICENSES, "\n".join(licences).encode("utf-8"))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
