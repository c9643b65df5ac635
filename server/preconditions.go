package server

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// This file holds the back-office API's checks against the rest of the
// system, made before a request changes anything: a bundle given to devices
// must be published in the TUF repository (with the same length and
// SHA-256), else no device could ever fetch it; a rollout must match at
// least one device.

// checkPublished refuses, as FailedPrecondition, a bundle that the TUF
// repository does not hold as given. field names it in the message. A zero
// bundle (a configuration-only document) passes.
func checkPublished(ctx context.Context, repo *tuf.Repository, field string, b store.Bundle) error {
	if b.IsZero() {
		return nil
	}
	pub, err := repo.FindBundle(ctx, b.TargetPath)
	var te *tuf.Error
	if errors.As(err, &te) && te.Kind == tuf.KindNotFound {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"%s: no bundle %q is published in the repository; publish it first (ferryctl bundle publish), or see ferryctl bundle list", field, b.TargetPath))
	}
	if err != nil {
		return err
	}
	if uint64(pub.Length) != b.Length || !strings.EqualFold(pub.SHA256(), b.SHA256) {
		// Another instance may have republished the path since this one
		// last loaded the repository.
		if changed, err := repo.Refresh(ctx); err != nil {
			return err
		} else if changed {
			if pub, err = repo.Bundle(b.TargetPath); err != nil {
				return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%s: %w", field, err))
			}
		}
	}
	if uint64(pub.Length) != b.Length || !strings.EqualFold(pub.SHA256(), b.SHA256) {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"%s: the repository's %q has length %d and sha256 %s, not length %d and sha256 %s", field, b.TargetPath, pub.Length, pub.SHA256(), b.Length, b.SHA256))
	}
	return nil
}

// checkMatchesDevices refuses, as FailedPrecondition, a rollout target set
// without any device: labels that no device has, or device ids of which
// none exists. A continuous rollout may wait for its devices, so it passes.
func checkMatchesDevices(ctx context.Context, rep *replica.Service, spec store.RolloutSpec) error {
	if spec.Continuous {
		return nil
	}
	if len(spec.Devices) > 0 {
		for _, id := range spec.Devices {
			_, err := rep.GetDevice(ctx, id)
			if err == nil {
				return nil
			}
			if !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("device_ids: none of the listed devices exists; see ferryctl device list"))
	}
	q, err := spec.TargetQuery()
	if err != nil {
		return err
	}
	devs, err := rep.ListQuery(ctx, q, "", 1)
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"selector: %s matches no device; check it with ferryctl device list --selector (a continuous rollout may wait for devices)", spec.SelectorString()))
	}
	return nil
}
