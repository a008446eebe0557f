#!/usr/bin/env bash
# Builds the pinned livekit-server and LiveKit SIP bridge from the Go module proxy into
# an ignored cache folder; does nothing when the pinned binaries are already there.
#   harness/livekit/build.sh [BIN_DIR]    (default: .cache/livekit)
# The SIP bridge needs cgo with Debian's pkg-config libopus-dev libopusfile-dev libsoxr-dev.
set -euo pipefail
cd "$(dirname "$0")/../.."

LIVEKIT_SERVER_VERSION=v1.13.5
LIVEKIT_SIP_VERSION=v1.8.0
BIN_DIR=${1:-${CAMPAIGNS_LIVEKIT_BIN_DIR:-.cache/livekit}}
mkdir -p "$BIN_DIR"
BIN_DIR=$(cd "$BIN_DIR" && pwd)

# Builds MODULE@VERSION's package PKG into BIN_DIR/NAME-VERSION. livekit-server's go.mod has
# replace directives, so `go install pkg@version` refuses it: build inside a copy of the module.
build() {
    local name=$1 module=$2 version=$3 pkg=$4 cgo=$5
    local out="$BIN_DIR/$name-$version"
    if [ -x "$out" ]; then echo "$name $version: cached"; return; fi
    echo "$name $version: downloading $module"
    local dir
    dir=$(go mod download -json "$module@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [ -n "$dir" ] || { echo "go mod download $module@$version gave no source" >&2; exit 1; }
    local src
    src=$(mktemp -d)
    cp -r "$dir/." "$src"
    chmod -R u+w "$src"
    echo "$name $version: building $pkg"
    (cd "$src" && CGO_ENABLED=$cgo go build -trimpath -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
    rm -rf "$src"
}

build livekit-server github.com/livekit/livekit-server "$LIVEKIT_SERVER_VERSION" ./cmd/server 0
build livekit-sip github.com/livekit/sip "$LIVEKIT_SIP_VERSION" ./cmd/livekit-sip 1
ln -sf "livekit-server-$LIVEKIT_SERVER_VERSION" "$BIN_DIR/livekit-server"
ln -sf "livekit-sip-$LIVEKIT_SIP_VERSION" "$BIN_DIR/livekit-sip"
