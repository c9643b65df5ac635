package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferryhq/ferry/audit"
	ferrycreds "github.com/ferryhq/ferry/credentials"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// The audit trail records every back-office call that changes something
// (every procedure not marked NO_SIDE_EFFECTS, and audit exports), every
// enrollment and renewal, and revocations (RevokeDevice): who, what with
// which arguments (secrets redacted, see audit.Redact), from where, and the
// status code it ended with, denied calls included.

// anonymous is the actor of a call without a valid credential.
//
// Unauthenticated calls (no credential, an unknown API key, a failed
// enrollment) are not recorded: anyone who reaches the port could fill the
// trail with them. They go to the log and to the refused-requests metric;
// the trail holds what authenticated actors did and were refused
// (permission denied).
const anonymous = "anonymous"

// auditSlot carries the operator that operatorAuth authenticated back out
// to the audit interceptor, which wraps it.
type auditSlot struct{ op ferrycreds.Operator }

type auditSlotKey struct{}

func noteOperator(ctx context.Context, op ferrycreds.Operator) {
	if slot, ok := ctx.Value(auditSlotKey{}).(*auditSlot); ok {
		slot.op = op
	}
}

// audited reports whether a procedure is recorded.
func audited(spec connect.Spec) bool {
	switch spec.Procedure {
	case fleetv1connect.AuditServiceExportAuditProcedure:
		return true
	case credentialsv1connect.CredentialServiceIssueDownloadTokenProcedure:
		return false // frequent, and grants nothing a device did not have
	}
	return spec.IdempotencyLevel != connect.IdempotencyNoSideEffects
}

// auditInterceptor records audited Connect calls. It goes outside
// operatorAuth, so denied calls are recorded too.
type auditInterceptor struct {
	rec         *audit.Recorder
	trustDomain string
}

func (a auditInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if a.rec == nil || !audited(req.Spec()) {
			return next(ctx, req)
		}
		slot := &auditSlot{}
		resp, err := next(context.WithValue(ctx, auditSlotKey{}, slot), req)
		msg, _ := req.Any().(proto.Message)
		actor, role := operatorActor(slot.op)
		if req.Spec().Procedure == credentialsv1connect.CredentialServiceEnrollProcedure {
			actor, role = a.enrolled(resp), ""
		}
		if actor == anonymous {
			return resp, err // see unauthenticated below
		}
		a.rec.Record(ctx, auditEntryFor(req.Spec().Procedure, actor, role, req.Peer().Addr, msg, connect.CodeOf(err), err))
		return resp, err
	}
}

func (a auditInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler records audited streaming calls (bundle uploads)
// without their messages.
func (a auditInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if a.rec == nil || !audited(conn.Spec()) {
			return next(ctx, conn)
		}
		slot := &auditSlot{}
		err := next(context.WithValue(ctx, auditSlotKey{}, slot), conn)
		actor, role := operatorActor(slot.op)
		if actor == anonymous {
			return err
		}
		a.rec.Record(ctx, auditEntryFor(conn.Spec().Procedure, actor, role, conn.Peer().Addr, nil, connect.CodeOf(err), err))
		return err
	}
}

// enrolled names the device an enrollment issued a certificate to.
func (a auditInterceptor) enrolled(resp connect.AnyResponse) string {
	if resp == nil {
		return anonymous
	}
	r, ok := resp.Any().(*credentialsv1.EnrollResponse)
	if !ok || len(r.GetCertificateChain()) == 0 {
		return anonymous
	}
	leaf, err := x509.ParseCertificate(r.GetCertificateChain()[0])
	if err != nil {
		return anonymous
	}
	id, err := ferrycreds.DeviceID(a.trustDomain, leaf)
	if err != nil {
		return anonymous
	}
	return "device:" + id
}

func operatorActor(op ferrycreds.Operator) (actor, role string) {
	if op.Name == "" {
		return anonymous, ""
	}
	return "operator:" + op.Name, string(op.Role)
}

// auditEntryFor builds the entry of one call. err is nil on success.
func auditEntryFor(procedure, actor, role, peerAddr string, msg proto.Message, code connect.Code, err error) store.AuditEntry {
	e := store.AuditEntry{Actor: actor, Role: role, Action: procedure, Peer: peerAddr, Result: "ok"}
	if err != nil {
		e.Result = code.String()
		e.Error = connect.NewError(code, errors.New(errorMessage(err))).Message()
	}
	if msg != nil {
		if raw, merr := (protojson.MarshalOptions{UseProtoNames: true}).Marshal(msg); merr == nil {
			e.Args = audit.Redact(raw)
		}
		e.Resource = resourceOf(e.Args)
	}
	return e
}

// errorMessage is the client-safe message of err.
func errorMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	_, msg := classify(err)
	return msg
}

// resourceOf picks what a call was about from its arguments.
func resourceOf(args json.RawMessage) string {
	var m map[string]any
	if json.Unmarshal(args, &m) != nil {
		return ""
	}
	for _, k := range []string{"device_id", "rollout_id", "id", "target_path", "name"} {
		if v, ok := m[k].(string); ok && v != "" {
			return v
		}
	}
	return ""
}

// auditRenewals records certificate renewals on the device port.
func auditRenewals(rec *audit.Recorder) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if rec == nil || info.FullMethod != credentialsv1connect.CredentialServiceRenewCertificateProcedure {
			return handler(ctx, req)
		}
		resp, err := handler(ctx, req)
		id, _ := deviceFromContext(ctx)
		addr := ""
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			addr = p.Addr.String()
		}
		code := connect.Code(status.Code(err))
		msg, _ := req.(proto.Message)
		e := auditEntryFor(info.FullMethod, "device:"+id, "", addr, msg, code, err)
		e.Resource = id
		rec.Record(ctx, e)
		return resp, err
	}
}

// auditSigner opens the key that signs audit exports: the KMS key when one
// is configured, else the key file, created (ECDSA P-256) when missing.
func auditSigner(ctx context.Context, cfg Config, log *slog.Logger) (signature.Signer, error) {
	if cfg.Audit.SigningKMS != "" {
		return tuf.OpenKMS(ctx, cfg.Audit.SigningKMS)
	}
	path := cfg.Audit.SigningKeyFile
	if path == "" {
		path = filepath.Join(cfg.DataDir, "audit", "signing.key")
	}
	key, err := ferrycreds.ReadKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) && cfg.Audit.SigningKeyFile == "" {
		k, gerr := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if gerr != nil {
			return nil, gerr
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := ferrycreds.WriteKeyFile(path, k); err != nil {
			return nil, fmt.Errorf("audit signing key %s: %w", path, err)
		}
		log.Info("audit signing key created", "path", path)
		key, err = k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit signing key %s: %w", path, err)
	}
	// The public key goes beside it, for auditors (ferryctl audit verify --key).
	if pemKey, err := cryptoutils.MarshalPublicKeyToPEM(key.Public()); err == nil {
		pubPath := strings.TrimSuffix(path, ".key") + ".pub"
		if err := os.WriteFile(pubPath, pemKey, 0o644); err != nil {
			log.Warn("audit public key not written", "path", pubPath, "err", err)
		}
	}
	return signature.LoadSigner(key, crypto.SHA256)
}

// runAuditPrune prunes entries past the retention, at start and hourly.
func (s *Server) runAuditPrune(ctx context.Context) {
	if s.audit == nil {
		return
	}
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := s.audit.Prune(ctx, s.cfg.Audit.Retention); err != nil && ctx.Err() == nil {
			s.log.Warn("audit prune", "err", err)
		} else if n > 0 {
			s.log.Info("audit entries pruned", "count", n, "retention", s.cfg.Audit.Retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// auditDenied records an operator call the API guard refused because the
// operator's role does not allow it.
func (s *Server) auditDenied(r *http.Request, op ferrycreds.Operator, err error) {
	if s.audit == nil || op.Name == "" {
		return // see unauthenticated
	}
	actor, role := operatorActor(op)
	code := connect.CodeOf(err)
	s.audit.Record(r.Context(), auditEntryFor(r.URL.Path, actor, role, r.RemoteAddr, nil, code, err))
}
