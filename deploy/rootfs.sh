#!/bin/sh
# Builds the file tree of the ferryd container image under ROOT. The
# Dockerfile's build stage runs it, and so does the test suite
# (deploy/deploy_test.go), without Docker or root. Run it from the
# repository root:
#
#   sh deploy/rootfs.sh ROOT
#
# ROOT/usr/local/bin/ferryd  static (CGO_ENABLED=0), -trimpath, stripped
# ROOT/var/lib/ferry         the data directory, mode 0700; the Dockerfile
#                            copies it owned by the image's user (65532)
set -eu
root=${1:?usage: sh deploy/rootfs.sh ROOT}
mkdir -p "$root/usr/local/bin" "$root/var/lib/ferry"
chmod 0700 "$root/var/lib/ferry"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$root/usr/local/bin/ferryd" ./cmd/ferryd
