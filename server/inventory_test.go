package server_test

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// badAttributes are attribute sets a device must not be able to record.
func badAttributes() map[string]map[string]string {
	many := map[string]string{}
	for i := range 65 {
		many["k"+strings.Repeat("x", i)] = "v"
	}
	return map[string]map[string]string{
		"empty key":            {"": "x"},
		"key with a space":     {"bad key": "x"},
		"key too long":         {strings.Repeat("k", 59): "x"},
		"key ends with a dot":  {"hardware.": "x"},
		"value too long":       {"hardware": strings.Repeat("v", 257)},
		"value with a newline": {"hardware": "gw\na"},
		"value with a NUL":     {"hardware": "gw\x00a"},
		"too many":             many,
	}
}

// TestHelloBadAttributes: a Hello with attributes that break the rules is
// refused with InvalidArgument, and records nothing.
func TestHelloBadAttributes(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.OpenDevice(t, "dev-1", &devicev1.Hello{Attributes: map[string]string{"hardware": "gw-a"}}).Close()
	for name, attrs := range badAttributes() {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			stream, err := devicev1.NewDeviceServiceClient(f.DeviceConn(t, f.DeviceTLS(t, "dev-1"))).Sync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{Attributes: attrs}}}); err != nil {
				t.Fatal(err)
			}
			msg, err := stream.Recv()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "attributes") {
				t.Fatalf("Hello with bad attributes: %v, %v; want InvalidArgument naming the attributes", msg, err)
			}
			if got := getDevice(t, f, "dev-1").GetAttributes(); !maps.Equal(got, map[string]string{"hardware": "gw-a"}) {
				t.Errorf("attributes after a refused Hello: %v, want them unchanged", got)
			}
		})
	}
}

// TestInventoryBadAttributes: an Inventory message with bad attributes
// ends the stream with InvalidArgument and records nothing; a good one
// replaces the device's attributes.
func TestInventoryBadAttributes(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	want := map[string]string{"hardware": "gw-a"}
	for name, attrs := range badAttributes() {
		t.Run(name, func(t *testing.T) {
			d := f.OpenDevice(t, "dev-1", &devicev1.Hello{Attributes: want})
			defer d.Close()
			d.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Inventory{Inventory: &devicev1.Inventory{Attributes: attrs}}})
			for {
				msg, err := d.RecvErr()
				if err == nil {
					continue // a Delta sent before the Inventory was read
				}
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("Inventory with bad attributes: %v, %v; want InvalidArgument", msg, err)
				}
				break
			}
			if got := getDevice(t, f, "dev-1").GetAttributes(); !maps.Equal(got, want) {
				t.Errorf("attributes after a refused Inventory: %v, want %v", got, want)
			}
		})
	}
	d := f.OpenDevice(t, "dev-1", &devicev1.Hello{Attributes: want})
	defer d.Close()
	next := map[string]string{"hardware": "gw-a", "storage_free_bytes": "1048576"}
	d.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Inventory{Inventory: &devicev1.Inventory{Attributes: next}}})
	deadline := time.Now().Add(10 * time.Second)
	for got := getDevice(t, f, "dev-1").GetAttributes(); !maps.Equal(got, next); got = getDevice(t, f, "dev-1").GetAttributes() {
		if time.Now().After(deadline) {
			t.Fatalf("attributes after an Inventory: %v, want %v", got, next)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
