// Package deploy holds ferryd's deployment files (Dockerfile, compose file,
// systemd unit, Helm chart in helm/ferry) and the device agent's systemd
// unit (ferry-agent.service, which scripts/build-deb packages), and no
// code: its tests check that the files work as written, with what runs
// without a Docker engine or a cluster. They run the image's build steps
// (rootfs.sh) and the resulting binary as the image would, parse the
// compose file for what two instances must share, lint and render the
// chart with helm, checking the manifests with kubeconform against the
// Kubernetes schemas, and build the agent's Debian package and check it
// with dpkg-deb and systemd-analyze verify.
package deploy
