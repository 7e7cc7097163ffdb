#!/bin/bash
# A second technical-documentation corpus for `python -m bench.quality`, beside the shipped Python
# docs: Django 4.2's documentation (BSD licence) from its PyPI sdist, release notes and the theme's
# files left out, converted by shared/corpora/rst2corpus.py into WikiText-103's layout
# (~2.2 MB, ~230 documents: the shipped corpus's size and kind, another project's prose).
# Usage: bench/get_djangodocs.sh [OUT]   (default OUT: /tmp/corpora; nothing is fetched twice)
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
rst2corpus=$(readlink -f "$here/../../shared/corpora/rst2corpus.py")
OUT=$(readlink -f "${1:-/tmp/corpora}")
mkdir -p "$OUT/.cache" && cd "$OUT/.cache"
ls Django-4.2.16.tar.gz >/dev/null 2>&1 || pip download -q --no-deps --no-binary :all: -d . Django==4.2.16
rm -rf django src && mkdir django src && tar xzf Django-4.2.16.tar.gz -C django
# rst2corpus reads Sphinx's *.rst.txt; Django's sources are *.txt
(cd django/Django-4.2.16/docs && find . -name '*.txt' ! -path './_theme/*' ! -name 'requirements.txt' \
    ! -path './releases/*' ! -path './spelling_wordlist' | while read -r f; do
    mkdir -p "$OUT/.cache/src/$(dirname "$f")"; cp "$f" "$OUT/.cache/src/${f%.txt}.rst.txt"; done)
python3 "$rst2corpus" wikitext "$OUT/djangodocs.wiki.tokens" src
ls -la "$OUT/djangodocs.wiki.tokens"
