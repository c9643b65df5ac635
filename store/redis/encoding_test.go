package redis_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// TestReadsJSONDocuments checks that a device stored by an earlier version
// (meta, documents, history entries and attestations in JSON) reads as it
// was written, and takes new writes, which are stored as CBOR.
func TestReadsJSONDocuments(t *testing.T) {
	ctx := context.Background()
	url, prefix := testredis.URL(t), testredis.Prefix(t)
	s, err := redis.Open(ctx, url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	opts, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	defer rdb.Close()

	at := testclock.Now().Truncate(time.Millisecond).Add(123456 * time.Nanosecond).In(time.FixedZone("CET", 3600))
	const id = "old-1"
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: id, Labels: map[string]string{"model": "gw2"}, CreatedAt: at}); err != nil {
		t.Fatal(err)
	}
	want := store.Device{
		ID: id, Labels: map[string]string{"model": "gw2"}, CreatedAt: at,
		Desired: store.Desired{Version: 1, JobID: "job-1", Bundle: store.Bundle{TargetPath: "fw.bin", Length: 3, SHA256: "ab"},
			Config: map[string]string{"a": "b"}, SetBy: "operator:dev", SetAt: at},
		Reported: store.Reported{Version: 1, DesiredVersion: 1, Bundle: store.Bundle{TargetPath: "fw.bin", Length: 3, SHA256: "ab"},
			Signed: true, ReportedAt: at, LastSeen: at, Job: store.Job{ID: "job-1", DesiredVersion: 1, Status: "SUCCEEDED", UpdatedAt: at}},
	}
	att := store.Attestation{JobID: "job-1", Envelope: []byte(`{"payload":"x"}`), CertificateChain: [][]byte{{1, 2, 3}}}
	ev := store.Event{Time: at, Kind: "job_ended", JobID: "job-1", DesiredVersion: 1, Status: "SUCCEEDED", Actor: "device:" + id}
	js := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// What an earlier version stored, field by field.
	bucket := prefix + redis.BucketTag(id) + ":"
	if err := rdb.HSet(ctx, bucket+"dev:"+id,
		"meta", js(map[string]any{"id": id, "labels": want.Labels, "created_at": at}),
		"d", js(want.Desired), "dv", "1", "r", js(want.Reported), "rv", "1", "es", "1").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.LPush(ctx, bucket+"ev:"+id, "1 "+js(ev)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.HSet(ctx, bucket+"att:"+id, "job-1", js(att)).Err(); err != nil {
		t.Fatal(err)
	}

	got, err := s.GetDevice(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GetDevice of a JSON device (-want +got):\n%s", diff)
	}
	evs, err := s.ListEvents(ctx, id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	ev.Seq = 1
	if diff := cmp.Diff([]store.Event{ev}, evs); diff != "" {
		t.Errorf("ListEvents of a JSON history (-want +got):\n%s", diff)
	}
	gotAtt, err := s.GetAttestation(ctx, id, "job-1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(att, gotAtt); diff != "" {
		t.Errorf("GetAttestation of a JSON attestation (-want +got):\n%s", diff)
	}

	// A new write lands on the old document and is stored as CBOR.
	next := want.Desired
	next.Version, next.JobID = 2, "job-2"
	if _, err := s.SetDesired(ctx, id, 1, next, store.Write{Event: store.Event{Time: at, Kind: "desired_set", JobID: "job-2", DesiredVersion: 2}}); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetDevice(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want.Desired = next
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GetDevice after a write (-want +got):\n%s", diff)
	}
	raw, err := rdb.HGet(ctx, bucket+"dev:"+id, "d").Result()
	if err != nil {
		t.Fatal(err)
	}
	if raw == "" || raw[0] == '{' {
		t.Errorf("desired document after a write = %q, want CBOR", raw)
	}
	if evs, err := s.ListEvents(ctx, id, 0, 10); err != nil || len(evs) != 2 || evs[0].Seq != 2 || evs[1].Kind != "job_ended" {
		t.Errorf("history after a write = %+v, %v; want the new event above the JSON one", evs, err)
	}
}
