package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/attest"
	ferrycreds "github.com/ferryhq/ferry/credentials"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/store"
)

// The API the console needs beside what ferryctl uses: who the caller is
// (OperatorService.WhoAmI), a stored report verified by ferryd
// (GetAttestationResponse's verification fields) and the TUF roles'
// versions and expiry (RepositoryService.GetRepositoryStatus). All of it is
// on the same authenticated Connect API, for any client.

// operatorService answers WhoAmI.
type operatorService struct {
	fleetv1connect.UnimplementedOperatorServiceHandler
}

var _ fleetv1connect.OperatorServiceHandler = operatorService{}

// Authentication methods WhoAmI names.
const (
	authAPIKey      = "api_key"
	authCertificate = "certificate"
)

func (operatorService) WhoAmI(ctx context.Context, req *connect.Request[fleetv1.WhoAmIRequest]) (*connect.Response[fleetv1.WhoAmIResponse], error) {
	op := operatorFromContext(ctx)
	method := authCertificate
	if strings.HasPrefix(req.Header().Get("Authorization"), "Bearer ") {
		method = authAPIKey // authorizeRequest prefers the key when both are sent
	}
	return connect.NewResponse(&fleetv1.WhoAmIResponse{
		Name: op.Name, Role: string(op.Role), Authentication: method, AllowedProcedures: allowedProcedures(op.Role),
	}), nil
}

// allowedProcedures lists, sorted, the procedures role may call.
func allowedProcedures(role ferrycreds.Role) []string {
	var out []string
	for p, need := range procedureRoles {
		if role.Allows(need) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// attestationResponse is a stored report with ferryd's verdict on it:
// verified against the device CA at the time the statement gives (its
// short-lived certificate may have expired since), signed by deviceID and
// about jobID.
func attestationResponse(a store.Attestation, roots *x509.CertPool, trustDomain, deviceID, jobID string) *fleetv1.GetAttestationResponse {
	resp := &fleetv1.GetAttestationResponse{Envelope: a.Envelope, CertificateChain: a.CertificateChain}
	for _, der := range a.CertificateChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			break // Verify names the bad certificate
		}
		resp.Certificates = append(resp.Certificates, certificateSummary(c))
	}
	resp.StatementJson = envelopeStatement(a.Envelope)
	st, _, err := attest.Verify(a.Envelope, a.CertificateChain, roots, trustDomain, time.Time{})
	if err == nil && st.Predicate.Device != deviceID {
		err = fmt.Errorf("%w: the statement is about device %q, not %q", attest.ErrInvalid, st.Predicate.Device, deviceID)
	}
	if err == nil && st.Predicate.JobID != jobID {
		err = fmt.Errorf("%w: the statement is about job %q, not %q", attest.ErrInvalid, st.Predicate.JobID, jobID)
	}
	if err != nil {
		resp.VerificationError = strings.TrimPrefix(err.Error(), attest.ErrInvalid.Error()+": ")
		return resp
	}
	resp.Verified = true
	return resp
}

// envelopeStatement returns the statement a DSSE envelope carries,
// indented JSON, without checking its signature; "" if it does not decode.
func envelopeStatement(envelope []byte) string {
	if len(envelope) > attest.MaxEnvelopeBytes {
		return ""
	}
	var env struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(envelope, &env); err != nil {
		return ""
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		if payload, err = base64.URLEncoding.DecodeString(env.Payload); err != nil {
			return ""
		}
	}
	var out bytes.Buffer
	if err := json.Indent(&out, payload, "", "  "); err != nil {
		return ""
	}
	return out.String()
}

func certificateSummary(c *x509.Certificate) *fleetv1.CertificateSummary {
	fp := sha256.Sum256(c.Raw)
	s := &fleetv1.CertificateSummary{
		Subject: c.Subject.String(), Issuer: c.Issuer.String(), SerialNumber: c.SerialNumber.Text(16),
		NotBefore: timestamppb.New(c.NotBefore), NotAfter: timestamppb.New(c.NotAfter),
		Sha256Fingerprint: hex.EncodeToString(fp[:]),
	}
	for _, u := range c.URIs {
		s.Uris = append(s.Uris, u.String())
	}
	return s
}

func (s *repositoryService) GetRepositoryStatus(ctx context.Context, req *connect.Request[repositoryv1.GetRepositoryStatusRequest]) (*connect.Response[repositoryv1.GetRepositoryStatusResponse], error) {
	// What another instance published is shown here too.
	if _, err := s.repo.Refresh(ctx); err != nil {
		s.log.WarnContext(ctx, "check the stored repository", "err", err)
	}
	roles := s.repo.Status() // none before the root is published (ferryctl repo init)
	resp := &repositoryv1.GetRepositoryStatusResponse{Now: timestamppb.New(s.repo.Now())}
	for _, r := range roles {
		resp.Roles = append(resp.Roles, &repositoryv1.RoleStatus{
			Role: r.Name, Version: uint64(r.Version), ExpireTime: timestamppb.New(r.Expires),
			Online: r.Online, ExpiresSoon: r.ExpiresSoon, Expired: r.Expired,
		})
	}
	return connect.NewResponse(resp), nil
}
