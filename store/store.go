// Package store defines what Ferry persists and the interfaces its backends
// implement.
//
// Each need is one small interface; a backend lives in its own subpackage:
// store/bolt is the embedded single-node default, store/redis the production
// backend shared by many ferryd instances. Both pass the conformance suite in
// store/storetest.
//
// Every write is safe to repeat: a backend may apply the same command twice
// (a client retry after a lost reply), and the second application must
// neither fail nor change anything.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/labels"
)

// Errors returned by backends. Callers test them with errors.Is.
var (
	// ErrNotFound: the device does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a compare-and-set saw another version than expected.
	ErrConflict = errors.New("version conflict")
	// ErrUnavailable: the backend cannot be reached or cannot serve for
	// now (connection refused or cut, timeouts, a server still loading or
	// failing over), or could not make a write as durable as asked (see
	// the Redis backend's minimum replicas: such a write may have landed).
	// The same call may succeed when it is made again later.
	ErrUnavailable = errors.New("store unavailable")
)

// DeviceNotFoundError is ErrNotFound for the device it names:
// errors.Is(err, ErrNotFound) holds for it.
type DeviceNotFoundError struct{ ID string }

func (e *DeviceNotFoundError) Error() string { return fmt.Sprintf("device %q not found", e.ID) }

// Is makes a DeviceNotFoundError match ErrNotFound.
func (e *DeviceNotFoundError) Is(target error) bool { return target == ErrNotFound }

// NameDevice returns err with the device id named when it is ErrNotFound
// without a name, and err unchanged otherwise.
func NameDevice(id string, err error) error {
	var named *DeviceNotFoundError
	if errors.Is(err, ErrNotFound) && !errors.As(err, &named) {
		return &DeviceNotFoundError{ID: id}
	}
	return err
}

// Bundle names a TUF target.
type Bundle struct {
	TargetPath string `json:"target_path,omitempty"`
	Length     uint64 `json:"length,omitempty"`
	SHA256     string `json:"sha256,omitempty"`
}

// IsZero reports whether b names no target.
func (b Bundle) IsZero() bool { return b == Bundle{} }

// Desired is a device's desired document and its version.
type Desired struct {
	// Version grows by one on every change; 0 means never set.
	Version uint64            `json:"version"`
	JobID   string            `json:"job_id,omitempty"`
	Bundle  Bundle            `json:"bundle,omitzero"`
	Forced  bool              `json:"forced,omitempty"`
	Config  map[string]string `json:"config,omitempty"`
	// Consent, when set, makes the device ask for consent before it
	// installs and/or reboots.
	Consent *ConsentPolicy `json:"consent,omitempty"`
	SetBy   string         `json:"set_by,omitempty"`
	SetAt   time.Time      `json:"set_at,omitzero"`
	// TraceParent is the W3C traceparent of the traced operation that
	// wrote this document, when ferryd traces (empty otherwise): the
	// device stream sends the document's Delta in that trace.
	TraceParent string `json:"trace_parent,omitempty"`
}

// ConsentPolicy says when a device asks for consent before it goes on
// with a job.
type ConsentPolicy struct {
	BeforeInstall bool `json:"before_install,omitempty"`
	BeforeReboot  bool `json:"before_reboot,omitempty"`
	// MaxDeferral bounds how long the device may defer the job (0: no
	// bound).
	MaxDeferral time.Duration `json:"max_deferral,omitempty"`
}

// Reported is what a device has shown about itself, and its version.
//
// DesiredVersion, Bundle, Config and the end of Job come only from reports
// the replica accepted: signed ones (Signed), or unsigned ones where the
// server allows them. What a device says without a signature when it
// connects is kept apart, in Claim: the bundle indexes, listings, the fleet
// summary and rollouts read Bundle, never the claim.
type Reported struct {
	// Version grows by one on every accepted write; 0 means never reported.
	Version uint64 `json:"version"`
	// DesiredVersion is the desired version the device last answered.
	DesiredVersion uint64            `json:"desired_version,omitempty"`
	Bundle         Bundle            `json:"bundle,omitzero"`
	Config         map[string]string `json:"config,omitempty"`
	// Signed is true when the accepted report that set DesiredVersion,
	// Bundle and Config was signed; false when it was unsigned (allowed
	// by configuration) or nothing was reported yet.
	Signed bool `json:"signed,omitempty"`
	// AgentVersion is what the device's latest Hello said (unsigned).
	AgentVersion string    `json:"agent_version,omitempty"`
	ReportedAt   time.Time `json:"reported_at,omitzero"`
	LastSeen     time.Time `json:"last_seen,omitzero"`
	Job          Job       `json:"job,omitzero"`
	// Claim is what the device said it runs in the Hello of its latest
	// stream, when that differs from Bundle and Config and no report was
	// accepted since; nil otherwise.
	Claim *Claim `json:"claim,omitempty"`
}

// Claim is what a device said about itself without a signature, in the
// Hello that opens its stream: hearsay, kept for the operator to see, never
// indexed or counted.
type Claim struct {
	Bundle Bundle            `json:"bundle,omitzero"`
	Config map[string]string `json:"config,omitempty"`
	// LastApplied is the desired version the device said it last applied.
	LastApplied uint64 `json:"last_applied,omitempty"`
	// At is when the device said it.
	At time.Time `json:"at,omitzero"`
}

// Job is the state of a device's current (or last) job execution. Status and
// Step hold the names of the protocol's enums ("SUCCEEDED", "DOWNLOADING").
type Job struct {
	ID             string    `json:"id,omitempty"`
	DesiredVersion uint64    `json:"desired_version,omitempty"`
	Status         string    `json:"status,omitempty"`
	Step           string    `json:"step,omitempty"`
	ErrorCode      string    `json:"error_code,omitempty"`
	Message        string    `json:"message,omitempty"`
	UpdatedAt      time.Time `json:"updated_at,omitzero"`
	// DownloadMethod is how the device fetched the job's bundle ("FULL" or
	// "DELTA"; empty before it said, and for configuration only), and
	// BytesDownloaded how many bytes of targets it received for the job,
	// both as its Progress last said; the final report keeps them.
	DownloadMethod  string `json:"download_method,omitempty"`
	BytesDownloaded uint64 `json:"bytes_downloaded,omitempty"`
}

// Device is the stored document of one device.
type Device struct {
	ID        string            `json:"id"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at,omitzero"`
	Desired   Desired           `json:"desired"`
	Reported  Reported          `json:"reported"`
	// Attributes are what the device reports about itself, unsigned (its
	// inventory: hardware model, OS, kernel, agent version, free storage,
	// what its inventory hook adds; see package inventory). They are
	// written with Devices.SetAttributes only, and indexed like labels.
	Attributes map[string]string `json:"attributes,omitempty"`
}

// Event is one entry of a device's history: a change of its desired state,
// a step or the end of a job, a connection. Kind names it ("desired_set",
// "job_progress", "job_ended", "job_superseded", "hello_claim", …).
type Event struct {
	// Seq numbers a device's events from 1; the store assigns it.
	Seq            uint64    `json:"seq,omitempty"`
	Time           time.Time `json:"time"`
	Kind           string    `json:"kind"`
	JobID          string    `json:"job_id,omitempty"`
	DesiredVersion uint64    `json:"desired_version,omitempty"`
	Status         string    `json:"status,omitempty"`
	Step           string    `json:"step,omitempty"`
	ErrorCode      string    `json:"error_code,omitempty"`
	Message        string    `json:"message,omitempty"`
	Actor          string    `json:"actor,omitempty"`
}

// Attestation is a device's signed report of how a job ended, kept so that
// anyone can verify it later.
type Attestation struct {
	JobID string `json:"job_id"`
	// Envelope is the DSSE envelope exactly as the device sent it.
	Envelope []byte `json:"envelope"`
	// CertificateChain is the device's certificate chain (DER, leaf first)
	// when the report was recorded.
	CertificateChain [][]byte `json:"certificate_chain"`
}

// Write is what goes with a compare-and-set, in the same atomic step.
type Write struct {
	// Event, if its Kind is set, is appended to the device's history.
	Event Event
	// Attestation, if set, is stored under its job id.
	Attestation *Attestation
}

// MaxEvents is how many events a device's history keeps; older ones are
// dropped as new ones come.
const MaxEvents = 100

// ErrNoAttestation: no signed report is stored for that job.
var ErrNoAttestation = errors.New("no attestation for this job")

// ListOptions selects a page of devices in id order.
type ListOptions struct {
	// After is the id the previous page ended with ("" for the first page).
	After string
	// Limit is the page size; it must be positive.
	Limit int
	// Query filters the devices.
	Query Query
}

// Query selects devices. Zero fields match every device.
type Query struct {
	// Labels must all be present with these values.
	Labels map[string]string
	// Bundle is the target path of the bundle the device's accepted
	// reports say it runs (NoBundle for none); a Hello's claim does not
	// count.
	Bundle string
	// Status is the device's job status (see Device.JobStatus).
	Status string
	// SeenBefore selects devices last seen before this time, or never.
	SeenBefore time.Time
	// Selector, if set, must match the device's SelectorSet (labels, and
	// attributes as "attr.<key>").
	Selector labels.Selector
}

// NoBundle stands for "no bundle reported" in queries and summaries.
const NoBundle = "(none)"

// StatusNone is the job status of a device that was never given a job.
const StatusNone = "NONE"

// Match reports whether d satisfies q.
func (q Query) Match(d Device) bool {
	for k, v := range q.Labels {
		if got, ok := d.Labels[k]; !ok || got != v {
			return false
		}
	}
	if q.Selector != nil && !q.Selector.Matches(d.SelectorSet()) {
		return false
	}
	return (q.Bundle == "" || q.Bundle == d.BundleKey()) &&
		(q.Status == "" || q.Status == d.JobStatus()) &&
		(q.SeenBefore.IsZero() || d.Reported.LastSeen.Before(q.SeenBefore))
}

// JobStatus is the status of the device's current job: QUEUED when the
// desired state is ahead of the job the device last worked on, else that
// job's status, or StatusNone.
func (d Device) JobStatus() string {
	switch {
	case d.Desired.Version > 0 && d.Desired.Version > d.Reported.Job.DesiredVersion:
		return "QUEUED"
	case d.Reported.Job.Status != "":
		return d.Reported.Job.Status
	}
	return StatusNone
}

// BundleKey is the target path of the bundle the device's accepted reports
// say it runs (Reported.Bundle, never Reported.Claim), or NoBundle.
func (d Device) BundleKey() string {
	if d.Reported.Bundle.TargetPath == "" {
		return NoBundle
	}
	return d.Reported.Bundle.TargetPath
}

// Summary counts a fleet.
type Summary struct {
	Total     uint64
	PerBundle map[string]uint64 // by BundleKey
	PerStatus map[string]uint64 // by JobStatus
	// Silent counts devices last seen before the time asked, or never.
	Silent uint64
}

// Seen is one device's last-seen time, for Devices.MarkSeen.
type Seen struct {
	ID string
	At time.Time
}

// Devices stores device documents. Implementations are safe for concurrent
// use by many goroutines and, for shared backends, many processes.
type Devices interface {
	// CreateDevice stores d if no device with its id exists, and returns the
	// stored document either way; created tells which. The versions of d are
	// ignored: a new device starts at version 0 of both documents.
	CreateDevice(ctx context.Context, d Device) (stored Device, created bool, err error)
	// GetDevice returns the device, or ErrNotFound.
	GetDevice(ctx context.Context, id string) (Device, error)
	// ListDevices returns up to opts.Limit devices matching opts.Query with
	// ids after opts.After, in id order. A query on status, bundle or label
	// walks that index, else a selector with a positive equality or "in"
	// term walks that term's label or attribute index (Query.SelectorIndex);
	// other queries filter a walk of all devices.
	ListDevices(ctx context.Context, opts ListOptions) ([]Device, error)
	// SetDesired replaces the desired document if its version is still
	// expect, together with w (atomically). d.Version must be expect+1. It
	// returns the stored device; ErrConflict (with the stored device) when
	// the version moved, and ErrNotFound when the device does not exist.
	// Repeating a write that already succeeded returns success and changes
	// nothing (the event is not appended twice).
	SetDesired(ctx context.Context, id string, expect uint64, d Desired, w Write) (Device, error)
	// SetAttributes replaces the device's attributes (nil or empty: none)
	// and moves its attribute index entries, without touching the
	// versioned documents or the history. It returns the stored device and
	// whether anything changed; the same attributes again write nothing.
	// ErrNotFound when the device does not exist.
	SetAttributes(ctx context.Context, id string, attrs map[string]string) (Device, bool, error)
	// SetReported is SetDesired for the reported document.
	SetReported(ctx context.Context, id string, expect uint64, r Reported, w Write) (Device, error)
	// ListEvents returns up to limit of a device's events with Seq below
	// before (0: from the newest), newest first.
	ListEvents(ctx context.Context, id string, before uint64, limit int) ([]Event, error)
	// GetAttestation returns the attestation stored for a device's job, or
	// ErrNoAttestation.
	GetAttestation(ctx context.Context, id, jobID string) (Attestation, error)
	// Summary counts the fleet from maintained counters, without reading
	// device documents.
	Summary(ctx context.Context, silentBefore time.Time) (Summary, error)
	// MarkSeen records last-seen times in one batch without touching the
	// versioned documents or appending events: a later time replaces an
	// earlier one, an earlier one is ignored, and ids of devices that do
	// not exist are ignored. GetDevice, listings, SeenBefore queries and
	// Summary's silent count use the latest of the reported document's
	// LastSeen and the marked time.
	MarkSeen(ctx context.Context, seen []Seen) error
	// Close releases the backend's resources.
	Close() error
}

// Changes carries change notices between ferryd instances. Notices are
// directed: a device's change goes to the instance that holds the device's
// stream (see Hold), not to every instance, and to every instance that has
// a fleet-wide watch open (see WatchAll). A backend announces every device
// it creates or writes by itself; PublishChange is for anything else.
// Delivery is best effort: a missed notice is caught by the stream's
// periodic check.
type Changes interface {
	// Hold records that this instance holds device id's stream, so that the
	// device's changes are delivered here. A Hold by another instance takes
	// the device over (a stale holder, such as an instance that was killed,
	// is overwritten by the next instance that holds the device).
	Hold(ctx context.Context, id string) error
	// Release ends this instance's hold of device id, unless another
	// instance holds it since.
	Release(ctx context.Context, id string) error
	// PublishChange announces that the devices changed, to their holders
	// and to the instances that watch the whole fleet.
	PublishChange(ctx context.Context, ids ...string) error
	// WatchAll makes this instance's subscriptions receive the changes of
	// every device, not only those it holds, until stop is called. It
	// returns once the watch is in place for changes written through this
	// instance; a backend shared by many instances says how soon the
	// others notice it.
	WatchAll(ctx context.Context) (stop func(), err error)
	// SubscribeChanges calls fn with the id of every changed device this
	// instance holds (and, while a WatchAll is open, of every changed
	// device) until ctx ends. fn must not block. It returns when ctx ends.
	// Once the subscription is in place, and again whenever notices may
	// have been lost (a broken subscription made again), fn is called with
	// AllChanged: every device this instance holds may have changed.
	SubscribeChanges(ctx context.Context, fn func(id string)) error
}

// AllChanged is the id Changes.SubscribeChanges passes when any device may
// have changed: no device id is empty.
const AllChanged = ""

// DesiredWrite is one device's compare-and-set in a batch (see
// DesiredBatcher): Devices.SetDesired's arguments.
type DesiredWrite struct {
	ID      string
	Expect  uint64
	Desired Desired
	Write   Write
}

// DesiredResult is the outcome of one DesiredWrite: what SetDesired would
// have returned for it (ErrConflict and ErrNotFound are per device).
type DesiredResult struct {
	Device Device
	Err    error
}

// DesiredBatcher is implemented by backends that write many devices'
// desired documents at once, as a selector or a rollout wave does: each
// write is SetDesired's compare-and-set with its own version, event and
// index updates, and a device's conflict or absence fails only that
// device. The error is the backend's (nothing, or not everything, may have
// been written; every write is safe to repeat).
type DesiredBatcher interface {
	SetDesiredBatch(ctx context.Context, writes []DesiredWrite) ([]DesiredResult, error)
}

// SetDesiredBatch runs writes through d's DesiredBatcher when it has one,
// else one SetDesired after the other.
func SetDesiredBatch(ctx context.Context, d Devices, writes []DesiredWrite) ([]DesiredResult, error) {
	if b, ok := d.(DesiredBatcher); ok {
		return b.SetDesiredBatch(ctx, writes)
	}
	out := make([]DesiredResult, len(writes))
	for i, w := range writes {
		dev, err := d.SetDesired(ctx, w.ID, w.Expect, w.Desired, w.Write)
		if err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		out[i] = DesiredResult{Device: dev, Err: err}
	}
	return out, nil
}
