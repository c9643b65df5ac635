package replica

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/ferryhq/ferry/store"
)

// EventConfigCopied is the history entry of a device whose desired
// configuration was copied from another device's reported one.
const EventConfigCopied = "config_copied"

// CopyConfig gives the configuration device from reports (all of it, or
// only keys) to every device q matches, as their desired
// configuration: each keeps its desired bundle and forced flag, and gets
// a new desired version and job. With keys, the keys are set on top of the
// device's current desired configuration; without, the source's whole
// configuration replaces it. The source device is left out. It returns the
// configuration given and how many devices got it. Nothing is written when
// the source, the keys or the selector are wrong.
// The caller parses the selector into q (ParseSelector) and refuses an
// empty one, as for SetDesiredMatching.
func (s *Service) CopyConfig(ctx context.Context, from string, q store.Query, keys []string, setBy string) (map[string]string, int, error) {
	if err := validateDeviceID(from); err != nil {
		return nil, 0, invalid("from_device_id", "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	src, err := s.devices.GetDevice(ctx, from)
	if err != nil {
		return nil, 0, store.NameDevice(from, err)
	}
	if src.Reported.Version == 0 || len(src.Reported.Config) == 0 {
		return nil, 0, invalid("from_device_id", "device %q has reported no configuration", from)
	}
	cfg := src.Reported.Config
	if len(keys) > 0 {
		cfg = make(map[string]string, len(keys))
		for _, k := range keys {
			v, ok := src.Reported.Config[k]
			if !ok {
				return nil, 0, invalid("keys", "device %q reports no configuration key %q (it reports %v)", from, k, slices.Sorted(maps.Keys(src.Reported.Config)))
			}
			cfg[k] = v
		}
	}
	updated, after := 0, ""
	for {
		page, err := s.devices.ListDevices(ctx, store.ListOptions{After: after, Limit: 500, Query: q})
		if err != nil {
			return cfg, updated, err
		}
		for _, d := range page {
			if d.ID == from {
				continue
			}
			if err := s.copyTo(ctx, d.ID, cfg, len(keys) > 0, from, setBy); err != nil && !errors.Is(err, store.ErrNotFound) {
				return cfg, updated, fmt.Errorf("copy configuration to %q after %d devices: %w", d.ID, updated, err)
			}
			updated++
		}
		if len(page) < 500 {
			return cfg, updated, nil
		}
		after = page[len(page)-1].ID
	}
}

// copyTo gives device id the configuration cfg (merged into its desired
// configuration when merge is set), keeping its desired bundle.
func (s *Service) copyTo(ctx context.Context, id string, cfg map[string]string, merge bool, from, setBy string) error {
	for range s.maxRetries {
		cur, err := s.devices.GetDevice(ctx, id)
		if err != nil {
			return store.NameDevice(id, err)
		}
		next := store.Desired{
			Version: cur.Desired.Version + 1,
			JobID:   newJobID(),
			Bundle:  cur.Desired.Bundle,
			Forced:  cur.Desired.Forced,
			Config:  maps.Clone(cfg),
			SetBy:   setBy,
			SetAt:   s.now().UTC(),
		}
		if cur.Desired.Version == 0 {
			next.Bundle = cur.Reported.Bundle // the device keeps what it runs
		}
		if merge {
			base := cur.Desired.Config
			if cur.Desired.Version == 0 {
				base = cur.Reported.Config
			}
			next.Config = maps.Clone(base)
			if next.Config == nil {
				next.Config = map[string]string{}
			}
			maps.Copy(next.Config, cfg)
		}
		if err := validateConfig("config", next.Config); err != nil {
			return err
		}
		ev := store.Event{Time: next.SetAt, Kind: EventConfigCopied, JobID: next.JobID, DesiredVersion: next.Version,
			Status: string(StatusQueued), Actor: setBy, Message: fmt.Sprintf("configuration %v copied from device %s", slices.Sorted(maps.Keys(cfg)), from)}
		_, err = s.devices.SetDesired(ctx, id, cur.Desired.Version, next, store.Write{Event: ev})
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return store.NameDevice(id, err)
		}
		s.log.InfoContext(ctx, "configuration copied", "device", id, "from", from, "version", next.Version, "by", setBy)
		s.changed(ctx, id)
		return nil
	}
	return fmt.Errorf("copy configuration to %q: %w: gave up after %d attempts", id, store.ErrConflict, s.maxRetries)
}
