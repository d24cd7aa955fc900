#!/usr/bin/env bash
# Build an offline HTML template for `dvc plots show` / `dvc plots diff`
# with vega, vega-lite and vega-embed inlined (no CDN needed).
#
# Usage: build_template.sh [OUTPUT]      (default: .dvc/plots/offline.html)
# Then:  dvc config plots.html_template plots/offline.html
#        (relative paths in that setting are resolved against the .dvc/ dir)
#
# Needs: npm (registry.npmjs.org reachable), tar, python3.
# Placeholders understood by dvc_render.html (DVC 3.x): {plot_divs} (required),
# {scripts} (the CDN <script> tags -- deliberately left OUT here),
# {refresh_tag} (meta refresh, used by `--refresh`/dvclive).
set -euo pipefail

OUT="${1:-.dvc/plots/offline.html}"
# Pinned so the result is reproducible; bump together if needed.
VEGA_VERSION="${VEGA_VERSION:-5.33.1}"
VEGA_LITE_VERSION="${VEGA_LITE_VERSION:-5.23.0}"
VEGA_EMBED_VERSION="${VEGA_EMBED_VERSION:-6.29.0}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

(
  cd "$WORK"
  # npm verifies the tarballs' integrity against the registry metadata.
  npm pack --silent "vega@${VEGA_VERSION}" "vega-lite@${VEGA_LITE_VERSION}" \
    "vega-embed@${VEGA_EMBED_VERSION}" >/dev/null
  for pkg in vega vega-lite vega-embed; do
    mkdir -p "$pkg"
    tar -xzf "$pkg"-[0-9]*.tgz -C "$pkg" "package/build/${pkg}.min.js"
  done
)

mkdir -p "$(dirname "$OUT")"
python3 - "$WORK" "$OUT" "$VEGA_VERSION" "$VEGA_LITE_VERSION" "$VEGA_EMBED_VERSION" <<'PY'
import re, sys
from pathlib import Path

work, out, v_vega, v_lite, v_embed = sys.argv[1:]
versions = {"vega": v_vega, "vega-lite": v_lite, "vega-embed": v_embed}

scripts = []
for pkg in ("vega", "vega-lite", "vega-embed"):
    js = (Path(work) / pkg / "package" / "build" / f"{pkg}.min.js").read_text("utf8")
    # Drop the source-map comment (the .map file is not shipped).
    js = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", js)
    # Safety checks: inlined JS must not close the <script> element, and
    # must not contain DVC's placeholders (dvc_render does plain str.replace).
    assert "</script" not in js.lower(), pkg
    for ph in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        assert ph not in js, (pkg, ph)
    scripts.append(
        f'<script type="text/javascript">/* {pkg}@{versions[pkg]} */\n{js}\n</script>'
    )

page = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- Offline template: vega@%s, vega-lite@%s, vega-embed@%s inlined.
         Built by build_template.sh; the CDN {scripts} placeholder is omitted on purpose. -->
%s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
""" % (v_vega, v_lite, v_embed, "\n".join(scripts))

# The comment above mentions {scripts}; make sure it does not appear literally
# (DVC would substitute the CDN tags there).
page = page.replace("the CDN {scripts} placeholder", "the CDN scripts placeholder")
assert "{scripts}" not in page and page.count("{plot_divs}") == 1
Path(out).write_text(page, encoding="utf8")
print(f"wrote {out} ({len(page.encode('utf8'))} bytes)")
PY
