// Package deploy holds ferryd's deployment files (Dockerfile, compose file,
// systemd unit) and no code: its tests check that the files work as
// written, with what runs without a Docker engine. They run the image's
// build steps (rootfs.sh) and the resulting binary as the image would, and
// parse the compose file for what two instances must share.
package deploy
