package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/credentials"
)

// errRevoked ends the stream of a device that was revoked.
var errRevoked = status.Error(codes.PermissionDenied, "the device's certificate was revoked")

// closeDevice ends device id's open stream on this instance, if it has one,
// with err. It reports whether there was one.
func (s *sessions) closeDevice(id string, err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.byID[id]
	if ok {
		sess.cancel(err)
	}
	return ok
}

// refuseRevoked is the device port's tls.Config.VerifyConnection: after
// the chain is verified, a certificate of a revoked device is refused. It
// reads the cached revocation set, so a handshake costs no store round
// trip.
func refuseRevoked(trustDomain string, revoked *credentials.RevocationSet) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil // ClientAuth refuses it
		}
		id, err := credentials.DeviceID(trustDomain, cs.PeerCertificates[0])
		if err != nil {
			return nil // the identity interceptor refuses it with a clear status
		}
		if revoked.Revoked(id) {
			return fmt.Errorf("device %s is revoked", id)
		}
		return nil
	}
}

// revoke revokes a device and closes its stream on this instance at once.
// Other instances close theirs at their next refresh.
func (c *credentialsState) revoke(ctx context.Context, id, reason, by string) error {
	if _, err := c.broker.Revoke(ctx, id, reason, by); err != nil {
		return err
	}
	c.sessions.closeDevice(id, errRevoked)
	return nil
}

// watchRevocations reloads the revocation set every RevocationRefresh and
// closes the streams of revoked devices this instance holds, so that a
// revocation made on another ferryd takes effect here within one interval.
func (c *credentialsState) watchRevocations(ctx context.Context) {
	t := time.NewTicker(c.cfg.Credentials.RevocationRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, err := c.revoked.Refresh(ctx)
		if err != nil {
			if ctx.Err() == nil {
				c.log.WarnContext(ctx, "revocation refresh failed; keeping the cached set", "err", err)
			}
			continue
		}
		for _, id := range ids {
			if c.sessions.closeDevice(id, errRevoked) {
				c.log.InfoContext(ctx, "closed the stream of a revoked device", "device", id)
			}
		}
	}
}
