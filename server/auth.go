package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	ferrycreds "github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
)

type deviceKey struct{}
type operatorKey struct{}

// deviceFromContext returns the device id the stream interceptor put in ctx.
func deviceFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(deviceKey{}).(string)
	return id, ok
}

// operatorFromContext returns the operator the API interceptor put in ctx.
func operatorFromContext(ctx context.Context) ferrycreds.Operator {
	op, _ := ctx.Value(operatorKey{}).(ferrycreds.Operator)
	return op
}

// deviceIdentity is the device port's stream interceptor: it takes the
// device id from the verified client certificate's SPIFFE ID, and refuses
// the stream if there is none or the device is revoked. Revocation is
// checked on every call, not only at the handshake: a revoked device must
// not open new streams on a connection it already holds.
func deviceIdentity(trustDomain string, revoked revocations) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		id, err := callingDevice(ss.Context(), trustDomain, revoked)
		if err != nil {
			return err
		}
		return handler(srv, &identifiedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), deviceKey{}, id)})
	}
}

// deviceIdentityUnary does the same for unary calls on the device port.
func deviceIdentityUnary(trustDomain string, revoked revocations) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id, err := callingDevice(ctx, trustDomain, revoked)
		if err != nil {
			return nil, err
		}
		return handler(context.WithValue(ctx, deviceKey{}, id), req)
	}
}

// revocations tells whether a device is revoked (credentials.RevocationSet).
type revocations interface {
	Revoked(id string) bool
}

// callingDevice returns the identity of the device calling, or the status
// that refuses the call.
func callingDevice(ctx context.Context, trustDomain string, revoked revocations) (string, error) {
	id, err := peerDevice(ctx, trustDomain)
	if err != nil {
		return "", status.Error(codes.Unauthenticated, err.Error())
	}
	if revoked.Revoked(id) {
		return "", errRevoked
	}
	return id, nil
}

func peerDevice(ctx context.Context, trustDomain string) (string, error) {
	leaf := peerLeaf(ctx)
	if leaf == nil {
		return "", fmt.Errorf("a verified client certificate is required")
	}
	id, err := ferrycreds.DeviceID(trustDomain, leaf)
	if err != nil {
		return "", fmt.Errorf("client certificate: %w", err)
	}
	return id, nil
}

// peerTLS returns the TLS state of a device-port call.
func peerTLS(ctx context.Context) (tls.ConnectionState, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return tls.ConnectionState{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	return info.State, ok
}

// peerLeaf returns the verified client certificate of a device-port call.
func peerLeaf(ctx context.Context) *x509.Certificate {
	st, ok := peerTLS(ctx)
	if !ok || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return nil
	}
	return st.VerifiedChains[0][0]
}

// peerChain returns the certificates the client presented, DER, leaf first.
func peerChain(ctx context.Context) [][]byte {
	st, _ := peerTLS(ctx)
	chain := make([][]byte, len(st.PeerCertificates))
	for i, c := range st.PeerCertificates {
		chain[i] = c.Raw
	}
	return chain
}

type identifiedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identifiedStream) Context() context.Context { return s.ctx }

// Authenticator checks back-office credentials.
type Authenticator interface {
	Authenticate(apiKey string) (ferrycreds.Operator, error)
}

// procedureRoles names the role each back-office procedure needs. A
// procedure missing here needs admin: new RPCs are closed until listed.
var procedureRoles = map[string]ferrycreds.Role{
	fleetv1connect.FleetServiceGetDeviceProcedure:        ferrycreds.RoleViewer,
	fleetv1connect.FleetServiceListDevicesProcedure:      ferrycreds.RoleViewer,
	fleetv1connect.FleetServiceGetFleetSummaryProcedure:  ferrycreds.RoleViewer,
	fleetv1connect.FleetServiceWatchDevicesProcedure:     ferrycreds.RoleViewer,
	fleetv1connect.FleetServiceListDeviceEventsProcedure: ferrycreds.RoleViewer,
	fleetv1connect.FleetServiceGetAttestationProcedure:   ferrycreds.RoleViewer,
	fleetv1connect.FleetServiceSetDesiredStateProcedure:  ferrycreds.RoleOperator,
	fleetv1connect.FleetServiceAddDeviceProcedure:        ferrycreds.RoleAdmin,
	fleetv1connect.FleetServiceRevokeDeviceProcedure:     ferrycreds.RoleAdmin,
	fleetv1connect.FleetServiceCopyConfigProcedure:       ferrycreds.RoleOperator,

	credentialsv1connect.DownloadKeyServiceListDownloadKeysProcedure:  ferrycreds.RoleViewer,
	credentialsv1connect.DownloadKeyServiceRotateDownloadKeyProcedure: ferrycreds.RoleAdmin,

	fleetv1connect.RolloutServiceGetRolloutProcedure:            ferrycreds.RoleViewer,
	fleetv1connect.RolloutServiceListRolloutsProcedure:          ferrycreds.RoleViewer,
	fleetv1connect.RolloutServiceWatchRolloutProcedure:          ferrycreds.RoleViewer,
	fleetv1connect.RolloutServiceListRolloutExecutionsProcedure: ferrycreds.RoleViewer,
	fleetv1connect.RolloutServiceCreateRolloutProcedure:         ferrycreds.RoleOperator,
	fleetv1connect.RolloutServicePauseRolloutProcedure:          ferrycreds.RoleOperator,
	fleetv1connect.RolloutServiceResumeRolloutProcedure:         ferrycreds.RoleOperator,
	fleetv1connect.RolloutServiceCancelRolloutProcedure:         ferrycreds.RoleOperator,

	repositoryv1connect.RepositoryServiceListBundlesProcedure:         ferrycreds.RoleViewer,
	repositoryv1connect.RepositoryServiceGetBundleProcedure:           ferrycreds.RoleViewer,
	repositoryv1connect.RepositoryServiceGetOnlineKeysProcedure:       ferrycreds.RoleViewer,
	repositoryv1connect.RepositoryServiceGetRepositoryStatusProcedure: ferrycreds.RoleViewer,
	repositoryv1connect.RepositoryServiceUploadBlobProcedure:          ferrycreds.RoleRelease,
	repositoryv1connect.RepositoryServicePublishTargetsProcedure:      ferrycreds.RoleRelease,
	repositoryv1connect.RepositoryServicePublishRootProcedure:         ferrycreds.RoleAdmin,

	// The audit trail is for auditors (and admins), not every viewer: it
	// holds who did what, from where, across the whole fleet.
	fleetv1connect.AuditServiceListAuditEventsProcedure: ferrycreds.RoleAuditor,
	fleetv1connect.AuditServiceExportAuditProcedure:     ferrycreds.RoleAuditor,

	// Any operator may ask who it is.
	fleetv1connect.OperatorServiceWhoAmIProcedure: ferrycreds.RoleViewer,
}

// roleFor returns the role a procedure needs.
func roleFor(procedure string) ferrycreds.Role {
	if r, ok := procedureRoles[procedure]; ok {
		return r
	}
	if strings.HasPrefix(procedure, "/grpc.reflection.") {
		return ferrycreds.RoleViewer
	}
	return ferrycreds.RoleAdmin
}

// authorize authenticates the bearer API key in h and checks that its
// operator has the role need.
func authorize(auth Authenticator, h http.Header, need ferrycreds.Role) (ferrycreds.Operator, error) {
	key, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok {
		return ferrycreds.Operator{}, connect.NewError(connect.CodeUnauthenticated,
			fmt.Errorf("an operator credential is required: send \"Authorization: Bearer <API key>\""))
	}
	op, err := auth.Authenticate(strings.TrimSpace(key))
	if err != nil {
		return ferrycreds.Operator{}, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("the API key is not valid"))
	}
	if !op.Role.Allows(need) {
		// The operator goes with the denial, for the audit trail.
		return op, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("operator %q has role %s; this call needs %s", op.Name, op.Role, need))
	}
	return op, nil
}

// authorizeRequest authenticates an operator by the bearer API key in h or,
// when there is none, by the TLS client certificate in state (from the
// operator CA; nil certs disables it), and checks the role need.
func authorizeRequest(auth Authenticator, certs *ferrycreds.OperatorCerts, h http.Header, state *tls.ConnectionState, need ferrycreds.Role) (ferrycreds.Operator, error) {
	if _, bearer := strings.CutPrefix(h.Get("Authorization"), "Bearer "); bearer || certs == nil || state == nil || len(state.PeerCertificates) == 0 {
		return authorize(auth, h, need)
	}
	op, err := certs.Authenticate(state.PeerCertificates)
	if err != nil {
		return ferrycreds.Operator{}, connect.NewError(connect.CodeUnauthenticated,
			fmt.Errorf("the client certificate is not a valid operator certificate; send an operator certificate or \"Authorization: Bearer <API key>\""))
	}
	if !op.Role.Allows(need) {
		// The operator goes with the denial, for the audit trail.
		return op, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("operator %q has role %s; this call needs %s", op.Name, op.Role, need))
	}
	return op, nil
}

// operatorAuth is the back-office interceptor: every call needs an operator
// credential (API key or operator certificate) with the procedure's role.
type operatorAuth struct {
	auth  Authenticator
	certs *ferrycreds.OperatorCerts
}

func (a operatorAuth) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		op, err := authorizeRequest(a.auth, a.certs, req.Header(), tlsStateFromContext(ctx), roleFor(req.Spec().Procedure))
		noteOperator(ctx, op)
		if err != nil {
			return nil, err
		}
		return next(context.WithValue(ctx, operatorKey{}, op), req)
	}
}

func (a operatorAuth) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a operatorAuth) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		op, err := authorizeRequest(a.auth, a.certs, conn.RequestHeader(), tlsStateFromContext(ctx), roleFor(conn.Spec().Procedure))
		noteOperator(ctx, op)
		if err != nil {
			return err
		}
		return next(context.WithValue(ctx, operatorKey{}, op), conn)
	}
}

// requireOperator guards a plain HTTP handler (metrics) with the same check
// as the Connect handlers: an API key or an operator certificate.
func requireOperator(auth Authenticator, certs *ferrycreds.OperatorCerts, need ferrycreds.Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := authorizeRequest(auth, certs, r.Header, r.TLS, need); err != nil {
			code := http.StatusUnauthorized
			if connect.CodeOf(err) == connect.CodePermissionDenied {
				code = http.StatusForbidden
			}
			http.Error(w, err.Error(), code)
			return
		}
		h.ServeHTTP(w, r)
	})
}
