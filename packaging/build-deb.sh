#!/usr/bin/env bash
# Build dist/meshd_<version>_all.deb with plain dpkg-deb (`make deb` calls this).
#
# Runs on Debian 12 as root and apt-installs what it lacks. Network is needed at build time only
# (apt, and PyPI for the pinned wheels in packaging/requirements.txt); installing the .deb needs
# nothing but Debian's archive. packaging/README.md explains what is bundled and why.
#
#   packaging/build-deb.sh            build
#   LINTIAN=1 packaging/build-deb.sh  build, then run lintian on the result
#
# For the upgrade tests (tests/packaging/test_upgrade.py), which build two packages of one tree:
#   MESHD_VERSION=V           package version V instead of pyproject's (meshd --version says V)
#   MESHD_PROTOCOL_MINOR=N    the build speaks wire protocol minor N (messages.PROTOCOL_MINOR)
#   MESHD_DEB_DIR=D           write the .deb to D instead of dist/
set -euo pipefail

cd "$(dirname "$0")/.."
SRC=$PWD
PKG=packaging
PY=/usr/bin/python3   # Debian's interpreter, the one the package runs on (not a pyenv on PATH)
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 LC_ALL=C.UTF-8
umask 022

die() { echo "build-deb: $*" >&2; exit 1; }

# ------------------------------------------------------------------ build dependencies
need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
[ -x "$PY" ] || need+=(python3)
"$PY" -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The runtime dependencies from Debian, so the staged tree can be smoke-tested before packaging.
"$PY" -c 'import cryptography' 2>/dev/null || need+=(python3-cryptography)
"$PY" -c 'import msgpack' 2>/dev/null || need+=(python3-msgpack)
command -v help2man >/dev/null || need+=(help2man)
if [ "${LINTIAN:-0}" = 1 ] && ! command -v lintian >/dev/null; then need+=(lintian); fi
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}: run as root, or apt-get install them"
    echo "build-deb: installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ------------------------------------------------------------------ version
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
INIT_VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' meshd/__init__.py)
[ "$VERSION" = "$INIT_VERSION" ] \
    || die "pyproject.toml says $VERSION but meshd/__init__.py says $INIT_VERSION"
if [ -n "${MESHD_VERSION:-}" ]; then
    [[ $MESHD_VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "MESHD_VERSION: not a version: $MESHD_VERSION"
    VERSION=$MESHD_VERSION
fi
MINOR=${MESHD_PROTOCOL_MINOR:-}
[ -z "$MINOR" ] || [[ $MINOR =~ ^[0-9]+$ ]] || die "MESHD_PROTOCOL_MINOR: not a number: $MINOR"
# Same bytes for the same commit: file times and the changelog date come from the last commit.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
MAINTAINER="meshd maintainers <maintainers@users.noreply.r-seed-c5a2a3b2.example>"

DEB_DIR=${MESHD_DEB_DIR:-dist}
DEB=$DEB_DIR/meshd_${VERSION}_all.deb
STAGE=build/deb/meshd
rm -rf "$STAGE"
mkdir -p "$STAGE" "$DEB_DIR"
LIB=$STAGE/usr/lib/meshd
DOC=$STAGE/usr/share/doc/meshd

# ------------------------------------------------------------------ files
install -D -m 0755 $PKG/meshd "$STAGE/usr/bin/meshd"
install -D -m 0644 $PKG/meshd.service "$STAGE/lib/systemd/system/meshd.service"
install -D -m 0644 conf/meshd.toml "$STAGE/etc/meshd/meshd.toml"
install -d -m 0755 "$STAGE/var/lib/meshd"

# Bundled pure-Python dependencies, pinned with hashes; no bytecode (postinst compiles it).
"$PY" -m pip install --quiet --no-warn-script-location --root-user-action=ignore \
    --target "$LIB" --no-deps --require-hashes --only-binary=:all: --no-compile \
    -r $PKG/requirements.txt
rm -rf "$LIB/bin"
find "$LIB" -name direct_url.json -delete
rm -rf "$LIB/typer/.agents"   # an AI-assistant guide shipped in the typer wheel, not code

# meshd itself, from the working tree.
mkdir -p "$LIB/meshd"
tar -C meshd --exclude=__pycache__ --exclude='*.py[co]' -cf - . | tar -C "$LIB/meshd" -xf -
# The overrides above, in the staged copy only (each pattern must match exactly once).
restage() {  # file, sed expression, the line it must leave
    sed -i "$2" "$LIB/meshd/$1"
    [ "$(grep -cx "$3" "$LIB/meshd/$1")" = 1 ] || die "cannot set '$3' in meshd/$1"
}
[ "$VERSION" = "$INIT_VERSION" ] \
    || restage __init__.py "s/^__version__ = \".*\"\$/__version__ = \"$VERSION\"/" "__version__ = \"$VERSION\""
[ -z "$MINOR" ] \
    || restage gossip/messages.py "s/^PROTOCOL_MINOR = [0-9]*\$/PROTOCOL_MINOR = $MINOR/" "PROTOCOL_MINOR = $MINOR"

# The staged tree as a command, run the way /usr/bin/meshd runs it (isolated, Debian's python3
# with Debian's cryptography and msgpack), without writing bytecode into the stage.
STAGED=build/deb/bin/meshd
mkdir -p build/deb/bin
cat >$STAGED <<EOF
#!/bin/sh
exec env COLUMNS=80 "$PY" -I -B -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = "meshd"; from meshd.cli import main; main()' "$SRC/$LIB" "\$@"
EOF
chmod 0755 $STAGED
[ "$($STAGED --version)" = "meshd $VERSION" ] || die "staged meshd --version is wrong"
SPEAKS=$("$PY" -I -B -c 'import sys; sys.path.insert(0, sys.argv[1]); from meshd.gossip import messages as m; print(f"{m.PROTOCOL_MAJOR}.{m.PROTOCOL_MINOR}")' "$SRC/$LIB")
[ -z "$MINOR" ] || [ "$SPEAKS" = "1.$MINOR" ] || die "staged meshd speaks protocol $SPEAKS"
$STAGED keygen >/dev/null || die "staged meshd keygen failed"

# Documentation: man page from --help, changelog, copyright with every bundled licence.
mkdir -p "$DOC" "$STAGE/usr/share/man/man1"
help2man --no-info --no-discard-stderr --section=1 --source="meshd $VERSION" \
    --name="gossip-driven container network mesh" --include=$PKG/meshd.h2m \
    $STAGED >build/deb/meshd.1
gzip -9n <build/deb/meshd.1 >"$STAGE/usr/share/man/man1/meshd.1.gz"

gzip -9n <docs/install.md >"$DOC/install.md.gz"
{
    echo "meshd ($VERSION) unstable; urgency=medium"
    echo
    echo "  * Release $VERSION; the changes are in the project's git history."
    echo
    echo " -- $MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$DOC/changelog.gz"
"$PY" $PKG/gen-copyright.py "$LIB" >"$DOC/copyright"

install -D -m 0644 $PKG/lintian-overrides "$STAGE/usr/share/lintian/overrides/meshd"

# ------------------------------------------------------------------ control area
# Bytecode is made on the target by postinst, never shipped (Debian Python policy 3.7).
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$STAGE/DEBIAN"
install -m 0644 $PKG/debian/conffiles "$STAGE/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "$PKG/debian/$s" "$STAGE/DEBIAN/$s"; done
find "$STAGE" -path "$STAGE/DEBIAN" -prune -o -type d -exec chmod go-w {} +
# Normalise modes, keeping the execute bits the sources have (meshd/lab/guest/init.sh).
find "$STAGE" -path "$STAGE/DEBIAN" -prune -o -type f -exec chmod u+rw,go+r,go-w {} +
SIZE=$(du -sk --apparent-size --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@INSTALLED_SIZE@/$SIZE/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    $PKG/debian/control.in >"$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' \
    | LC_ALL=C sort -z | xargs -0 md5sum) >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums"

find "$STAGE" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "build-deb: $DEB ($(du -h "$DEB" | cut -f1), installed ${SIZE} KiB, protocol $SPEAKS)"

if [ "${LINTIAN:-0}" = 1 ]; then
    lintian --info --display-info --pedantic "$DEB" || true
fi
