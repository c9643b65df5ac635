package server_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

func tokenKid(t *testing.T, token string) string {
	t.Helper()
	tok, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
	if err != nil {
		t.Fatalf("token %q: %v", token, err)
	}
	kid, _ := tok.Header["kid"].(string)
	return kid
}

// TestDownloadKeyRotationAcrossInstances rotates the download token key
// through the API of one of two ferryd instances on one Redis while a
// device holds a token: the token keeps downloading on the other instance
// during the grace, new tokens name the new key and download on both, and
// once the grace is over the old token is refused everywhere.
func TestDownloadKeyRotationAcrossInstances(t *testing.T) {
	var viewerKey string
	a := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) {
		viewerKey = ferrytest.AddOperator(t, cfg, "vic", credentials.RoleViewer)
	})
	ctx := t.Context()
	gw := enroll(t, a, "gw-rot")
	fw := bytes.Repeat([]byte("firmware under a rotating key "), 400)
	fx := newRepoFixture(t, a, tuftest.Options{})
	fx.add(t, "rot/fw.bin", fw)
	setDesired(t, a.Fleet(t), "gw-rot", "rot/fw.bin", fw)
	// B shares A's Redis and data directory (repository and online keys),
	// as instances behind one load balancer do; it reads the repository
	// when it starts, after the bundle is published.
	b := a.StartPeer(t, func(cfg *server.Config) { cfg.DataDir = a.Config().DataDir })
	onB := func(url string) string { return strings.Replace(url, a.APIAddr(), b.APIAddr(), 1) }
	keysOf := func(f *ferrytest.Ferryd, key string) credentialsv1connect.DownloadKeyServiceClient {
		return credentialsv1connect.NewDownloadKeyServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(key))
	}
	adminA := keysOf(a, a.OperatorToken(t))
	req := &credentialsv1.IssueDownloadTokenRequest{TargetPath: "rot/fw.bin"}

	before, err := keysOf(b, viewerKey).ListDownloadKeys(ctx, connect.NewRequest(&credentialsv1.ListDownloadKeysRequest{}))
	if err != nil {
		t.Fatalf("ListDownloadKeys as viewer on B: %v", err)
	}
	old := mustToken(t, a, gw, req)
	if kid := tokenKid(t, old.GetToken()); kid == "" || kid != before.Msg.GetCurrent().GetId() {
		t.Fatalf("token names key %q, want the current key %q", kid, before.Msg.GetCurrent().GetId())
	}
	for name, url := range map[string]string{"A": old.GetUrl(), "B": onB(old.GetUrl())} {
		if c := download(t, gw.tls, url, old.GetToken(), "", fw); c != codes.OK {
			t.Fatalf("old token on %s before rotation: %v", name, c)
		}
	}

	// Rotation: admin only.
	if _, err := keysOf(a, viewerKey).RotateDownloadKey(ctx, connect.NewRequest(&credentialsv1.RotateDownloadKeyRequest{})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("RotateDownloadKey as viewer: %v, want PermissionDenied", err)
	}
	if _, err := adminA.RotateDownloadKey(ctx, connect.NewRequest(&credentialsv1.RotateDownloadKeyRequest{Grace: durationpb.New(-time.Second)})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("RotateDownloadKey with a negative grace: %v, want InvalidArgument", err)
	}
	const grace = 4 * time.Second
	rotated, err := adminA.RotateDownloadKey(ctx, connect.NewRequest(&credentialsv1.RotateDownloadKeyRequest{Grace: durationpb.New(grace)}))
	if err != nil {
		t.Fatalf("RotateDownloadKey: %v", err)
	}
	newKid, oldKid := rotated.Msg.GetCurrent().GetId(), before.Msg.GetCurrent().GetId()
	prev := rotated.Msg.GetPrevious()
	if newKid == oldKid || len(prev) != 1 || prev[0].GetId() != oldKid || prev[0].GetRetireTime() == nil {
		t.Fatalf("after rotation: current %v, previous %v", rotated.Msg.GetCurrent(), prev)
	}
	retire := prev[0].GetRetireTime().AsTime()

	// Within the grace: the old token still downloads on B (and A); a
	// token issued by A names the new key and downloads on B, which did
	// not know that key yet; B then issues with the new key too.
	fresh := mustToken(t, a, gw, req)
	if kid := tokenKid(t, fresh.GetToken()); kid != newKid {
		t.Fatalf("token after rotation names %q, want %q", kid, newKid)
	}
	if c := download(t, gw.tls, onB(fresh.GetUrl()), fresh.GetToken(), "", fw); c != codes.OK {
		t.Fatalf("new token from A on B: %v", c)
	}
	fromB := mustToken(t, b, gw, req)
	if kid := tokenKid(t, fromB.GetToken()); kid != newKid {
		t.Fatalf("B issues tokens with key %q after the rotation, want %q", kid, newKid)
	}
	checks := []struct {
		name, url, token string
	}{
		{"old token on B", onB(old.GetUrl()), old.GetToken()},
		{"old token on A", old.GetUrl(), old.GetToken()},
		{"new token from A on A", fresh.GetUrl(), fresh.GetToken()},
		{"new token from B on A", strings.Replace(fromB.GetUrl(), b.APIAddr(), a.APIAddr(), 1), fromB.GetToken()},
		{"new token from B on B", fromB.GetUrl(), fromB.GetToken()},
	}
	for _, c := range checks {
		if got := download(t, gw.tls, c.url, c.token, "bytes=0-99", fw); got != codes.OK {
			t.Errorf("within the grace: %s: %v", c.name, got)
		}
	}
	if time.Now().After(retire) {
		t.Fatalf("the checks within the grace ended after it (%v); raise the grace", retire)
	}
	listed, err := keysOf(b, viewerKey).ListDownloadKeys(ctx, connect.NewRequest(&credentialsv1.ListDownloadKeysRequest{}))
	if err != nil || listed.Msg.GetCurrent().GetId() != newKid || len(listed.Msg.GetPrevious()) != 1 {
		t.Fatalf("ListDownloadKeys on B after rotation: %v, %v", listed, err)
	}

	// After the grace: the old token is refused on both; the new ones
	// still download.
	time.Sleep(time.Until(retire) + 50*time.Millisecond)
	for name, url := range map[string]string{"A": old.GetUrl(), "B": onB(old.GetUrl())} {
		if c := download(t, gw.tls, url, old.GetToken(), "", fw); c != codes.Unauthenticated {
			t.Errorf("old token on %s after the grace: %v, want Unauthenticated (401)", name, c)
		}
	}
	if c := download(t, gw.tls, onB(fresh.GetUrl()), fresh.GetToken(), "", fw); c != codes.OK {
		t.Errorf("new token on B after the grace: %v", c)
	}
	if c := download(t, gw.tls, fromB.GetUrl(), fromB.GetToken(), "", fw); c != codes.OK {
		t.Errorf("B's new token on B after the grace: %v", c)
	}
}

// TestDownloadKeyGraceValidation: a configured grace that would break
// tokens in flight is refused at start with a message that says what to
// set.
func TestDownloadKeyGraceValidation(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.Credentials.DownloadTokenTTL = 30 * time.Minute
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "download key grace") || !strings.Contains(err.Error(), "30m5s") {
		t.Errorf("Validate with a 30m token lifetime and the default grace = %v, want a grace error naming 30m5s", err)
	}
	cfg.Credentials.DownloadKeyGrace = 31 * time.Minute
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate with a grace over the token lifetime: %v", err)
	}
}
