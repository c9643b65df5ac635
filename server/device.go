package server

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/attest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// deviceService serves DeviceService.Sync. Each stream is a syncStream with
// a receive loop (device messages, in order) and a send loop (the only
// goroutine that sends), joined by a close signal.
type deviceService struct {
	devicev1.UnimplementedDeviceServiceServer
	replica  *replica.Service
	limits   DeviceLimits
	log      *slog.Logger
	metrics  *metrics
	sessions *sessions
	// roots and trustDomain verify signed reports; requireSigned refuses
	// unsigned ones.
	roots         *x509.CertPool
	trustDomain   string
	requireSigned bool
	now           func() time.Time
	// revoked is checked again once the stream is registered, so that a
	// revocation landing between the call's check and the registration
	// (which closeDevice would miss) still ends it.
	revoked revocations
	// tracer, when tracing is on, makes a span per message received or
	// sent (pings and their answers aside); nil when it is off.
	tracer trace.Tracer
}

// errReplaced and errShuttingDown end streams from the outside.
var (
	errReplaced     = status.Error(codes.Aborted, "replaced by a newer stream of the same device")
	errShuttingDown = status.Error(codes.Unavailable, "ferryd is shutting down; reconnect")
)

func (s *deviceService) Sync(gs grpc.BidiStreamingServer[devicev1.SyncRequest, devicev1.SyncResponse]) error {
	ctx := gs.Context()
	id, ok := deviceFromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no device identity")
	}
	log := s.log.With("device", id)

	hello, err := s.receiveHello(ctx, gs)
	if err != nil {
		return err
	}
	// Subscribe before reading the device: a change committed after the
	// read then still signals this stream (subscribing after it would lose
	// a change made in between).
	changed, held, unsubscribe := s.replica.Subscribe(ctx, id)
	defer unsubscribe()
	helloCtx, helloSpan := s.messageSpan(ctx, id, "receive", "hello", attribute.String("ferry.agent.version", hello.GetAgentVersion()))
	dev, err := s.replica.Connect(helloCtx, id, replica.Hello{
		AgentVersion: hello.GetAgentVersion(),
		LastApplied:  hello.GetLastAppliedDesiredVersion(),
		State:        stateFromProto(hello.GetReported()),
		Attributes:   hello.GetAttributes(),
	})
	if err != nil {
		err = grpcError(helloCtx, log, err)
		endSpan(helloSpan, err)
		return err
	}
	endSpan(helloSpan, nil)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	release := s.sessions.add(id, cancel)
	defer release()
	if s.revoked.Revoked(id) {
		return errRevoked
	}

	nonce := make([]byte, 16)
	rand.Read(nonce)
	st := &syncStream{
		svc:      s,
		id:       id,
		nonce:    base64.RawURLEncoding.EncodeToString(nonce),
		chain:    peerChain(ctx),
		leaf:     peerLeaf(ctx),
		log:      log,
		gs:       gs,
		ctx:      ctx,
		out:      make(chan answer, 8),
		resend:   make(chan uint64, 1),
		lastSent: hello.GetLastAppliedDesiredVersion(),
		changed:  changed,
		held:     held,
		limiter:  rate.NewLimiter(rate.Limit(s.limits.MessagesPerSecond), s.limits.MessageBurst),
	}
	s.metrics.streams.Inc()
	s.metrics.streamsOpened.Inc()
	defer s.metrics.streams.Dec()
	log.InfoContext(helloCtx, "device connected", "agent", hello.GetAgentVersion(),
		"last_applied", hello.GetLastAppliedDesiredVersion(), "desired", dev.Desired.Version)

	recvDone := make(chan error, 1)
	go func() { recvDone <- st.receiveLoop() }()
	err = st.sendLoop(dev, recvDone)
	cancel(err)
	log.InfoContext(ctx, "device disconnected", "reason", err)
	if errors.Is(err, io.EOF) {
		s.metrics.streamsClosed.WithLabelValues("device_closed").Inc()
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && status.Code(cause) != codes.Unknown {
		err = cause
	}
	s.metrics.streamsClosed.WithLabelValues(closeReason(err)).Inc()
	return err
}

// closeReason is the reason label of a stream that ended with err: its
// gRPC code, in snake case ("unavailable", "resource_exhausted"...).
func closeReason(err error) string {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		err = status.FromContextError(err).Err()
	}
	return toSnake(status.Code(err).String())
}

// toSnake turns "ResourceExhausted" into "resource_exhausted".
func toSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if 'A' <= r && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// receiveHello waits for the stream's first message, which must be Hello.
func (s *deviceService) receiveHello(ctx context.Context, gs grpc.BidiStreamingServer[devicev1.SyncRequest, devicev1.SyncResponse]) (*devicev1.Hello, error) {
	type result struct {
		msg *devicev1.SyncRequest
		err error
	}
	got := make(chan result, 1)
	go func() {
		m, err := gs.Recv()
		got <- result{m, err}
	}()
	timer := time.NewTimer(s.limits.HelloTimeout)
	defer timer.Stop()
	select {
	case r := <-got:
		if r.err != nil {
			return nil, r.err
		}
		hello := r.msg.GetHello()
		if hello == nil {
			return nil, status.Error(codes.FailedPrecondition, "the first message of a stream must be Hello")
		}
		return hello, nil
	case <-timer.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %v", s.limits.HelloTimeout)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// syncStream is one device's open stream.
type syncStream struct {
	svc *deviceService
	id  string
	log *slog.Logger
	gs  grpc.BidiStreamingServer[devicev1.SyncRequest, devicev1.SyncResponse]
	ctx context.Context

	// out carries answers from the receive loop to the send loop.
	out chan answer
	// resend asks the send loop to send the newest Delta again to a device
	// that reported on an older version.
	resend chan uint64
	// lastSent is the newest desired version the device has, or was sent.
	// Only the send loop touches it.
	lastSent uint64
	limiter  *rate.Limiter
	// changed signals that the device's desired state may have changed.
	changed <-chan struct{}
	// held is false when this instance could not take the device's change
	// notices: the stream then re-reads the device every ResyncInterval.
	held bool
	// retry fires when a refresh the store could not serve is due again
	// (nil: none is).
	retry <-chan time.Time
	// nonce must be in every signed report on this stream; chain is the
	// device's certificate chain (DER, leaf first) from the TLS handshake.
	nonce string
	chain [][]byte
	leaf  *x509.Certificate
}

// answer is a response to a device's message, with the span context of
// the message's span (invalid when untraced): its send joins that trace.
type answer struct {
	resp  *devicev1.SyncResponse
	trace trace.SpanContext
}

// syncMethod names the stream in span names.
var syncMethod = strings.TrimPrefix(devicev1.DeviceService_Sync_FullMethodName, "/")

// messageSpan starts the span of a message received ("receive") or sent
// ("send") on the stream; the span is nil when tracing is off.
func (st *syncStream) messageSpan(ctx context.Context, dir, kind string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return st.svc.messageSpan(ctx, st.id, dir, kind, attrs...)
}

func (s *deviceService) messageSpan(ctx context.Context, id, dir, kind string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if s.tracer == nil {
		return ctx, nil
	}
	spanKind := trace.SpanKindConsumer
	if dir == "send" {
		spanKind = trace.SpanKindProducer
	}
	attrs = append(attrs, deviceAttr(id), attribute.String("ferry.message", kind))
	return s.tracer.Start(ctx, syncMethod+" "+dir+" "+kind, trace.WithSpanKind(spanKind), trace.WithAttributes(attrs...))
}

// send sends resp in a span that is a child of parent's span (a root
// when it has none).
func (st *syncStream) send(parent context.Context, kind string, resp *devicev1.SyncResponse, attrs ...attribute.KeyValue) error {
	_, span := st.messageSpan(parent, "send", kind, attrs...)
	err := st.gs.Send(resp)
	endSpan(span, err)
	return err
}

// sendAnswer sends an answer in the trace of the message it answers.
func (st *syncStream) sendAnswer(a answer) error {
	ctx := st.ctx
	if a.trace.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, a.trace)
	}
	return st.send(ctx, answerKind(a.resp), a.resp)
}

// answerKind names a response sent for a report.
func answerKind(resp *devicev1.SyncResponse) string {
	if resp.GetRejected() != nil {
		return "rejected"
	}
	return "accepted"
}

// receivedKind names a device message in span names; traced is
// false for the answers to pings.
func receivedKind(msg *devicev1.SyncRequest) (kind string, traced bool) {
	switch msg.GetMessage().(type) {
	case *devicev1.SyncRequest_Report:
		return "report", true
	case *devicev1.SyncRequest_Progress:
		return "progress", true
	case *devicev1.SyncRequest_Ack:
		return "ack", false
	case *devicev1.SyncRequest_Hello:
		return "hello", true
	case *devicev1.SyncRequest_Inventory:
		return "inventory", true
	}
	return "empty", true
}

// receiveLoop handles the device's messages in order until the stream ends.
func (st *syncStream) receiveLoop() error {
	for {
		msg, err := st.gs.Recv()
		if err != nil {
			return err
		}
		if !st.limiter.Allow() {
			return status.Errorf(codes.ResourceExhausted, "more than %g messages per second", st.svc.limits.MessagesPerSecond)
		}
		if err := st.handle(msg); err != nil {
			return err
		}
	}
}

func (st *syncStream) handle(msg *devicev1.SyncRequest) (err error) {
	ctx := st.ctx
	if kind, traced := receivedKind(msg); traced && st.svc.tracer != nil {
		var span trace.Span
		ctx, span = st.messageSpan(ctx, "receive", kind)
		defer func() { endSpan(span, err) }()
	}
	switch m := msg.GetMessage().(type) {
	case *devicev1.SyncRequest_Report:
		st.svc.metrics.received.WithLabelValues("report").Inc()
		return st.report(ctx, m.Report)
	case *devicev1.SyncRequest_Progress:
		st.svc.metrics.received.WithLabelValues("progress").Inc()
		p := m.Progress
		_, err := st.svc.replica.Progress(ctx, st.id, progressFromProto(p))
		if err == nil && p.GetStep() == devicev1.Step_STEP_AWAITING_CONSENT {
			// A device waiting for consent sends Progress, not ping
			// answers, to say it is still there.
			err = st.svc.replica.Seen(ctx, st.id)
		}
		if err != nil {
			return grpcError(ctx, st.log, err)
		}
		return nil
	case *devicev1.SyncRequest_Ack:
		st.svc.metrics.received.WithLabelValues("ack").Inc()
		if m.Ack.GetPingId() != 0 { // the device is still there
			if err := st.svc.replica.Seen(ctx, st.id); err != nil {
				return grpcError(ctx, st.log, err)
			}
		}
		return nil
	case *devicev1.SyncRequest_Inventory:
		st.svc.metrics.received.WithLabelValues("inventory").Inc()
		if _, err := st.svc.replica.SetAttributes(ctx, st.id, m.Inventory.GetAttributes()); err != nil {
			return grpcError(ctx, st.log, err)
		}
		return nil
	case *devicev1.SyncRequest_Hello:
		return status.Error(codes.FailedPrecondition, "Hello may be sent only once, first")
	default:
		return status.Error(codes.InvalidArgument, "empty message")
	}
}

func (st *syncStream) report(ctx context.Context, r *devicev1.Report) error {
	rep, refusal, reason := st.verify(r)
	var out replica.Outcome
	if reason != "" {
		cur, err := st.svc.replica.GetDevice(ctx, st.id)
		if err != nil {
			return grpcError(ctx, st.log, err)
		}
		st.log.InfoContext(ctx, "report rejected", "code", rejectCodes[refusal], "reason", reason)
		out = replica.Outcome{Code: refusal, Reason: reason, Device: cur}
	} else {
		var err error
		if out, err = st.svc.replica.Report(ctx, st.id, rep); err != nil {
			return grpcError(ctx, st.log, err)
		}
	}
	r = &devicev1.Report{JobId: rep.JobID, DesiredVersion: rep.DesiredVersion}
	var resp *devicev1.SyncResponse
	if out.Accepted {
		st.svc.metrics.reports.WithLabelValues("accepted", "").Inc()
		resp = &devicev1.SyncResponse{Message: &devicev1.SyncResponse_Accepted{Accepted: &devicev1.Accepted{
			JobId: r.GetJobId(), DesiredVersion: r.GetDesiredVersion(),
			ReportedVersion: out.Device.Reported.Version, Superseded: out.Superseded, Repeated: out.Repeated,
		}}}
	} else {
		st.svc.metrics.reports.WithLabelValues("rejected", rejectCodeLabel(out.Code)).Inc()
		resp = &devicev1.SyncResponse{Message: &devicev1.SyncResponse_Rejected{Rejected: &devicev1.Rejected{
			JobId: r.GetJobId(), DesiredVersion: r.GetDesiredVersion(),
			Code: rejectCodes[out.Code], Reason: out.Reason,
			CurrentDesiredVersion: out.Device.Desired.Version,
		}}}
	}
	select {
	case st.out <- answer{resp: resp, trace: trace.SpanContextFromContext(ctx)}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if out.Superseded {
		select {
		case st.resend <- r.GetDesiredVersion():
		default: // one pending resend is enough: it sends the newest
		}
	}
	return nil
}

// sendLoop is the only sender on the stream. It sends the newest Delta when
// the device is behind, answers from the receive loop, and pings.
func (st *syncStream) sendLoop(dev store.Device, recvDone <-chan error) error {
	if err := st.send(st.ctx, "session", &devicev1.SyncResponse{Message: &devicev1.SyncResponse_Session{Session: &devicev1.Session{
		Nonce: st.nonce, ServerTime: timestamppb.New(st.svc.now()),
	}}}); err != nil {
		return err
	}
	if err := st.sendDeltaIfAhead(dev); err != nil {
		return err
	}
	ping := time.NewTicker(st.svc.limits.PingInterval)
	defer ping.Stop()
	// Notices signal changes (and every stream at once when some may have
	// been lost); only a stream without them reads the device on a timer.
	var resync <-chan time.Time
	if !st.held {
		t := time.NewTicker(st.svc.limits.ResyncInterval)
		defer t.Stop()
		resync = t.C
	}
	var pingID uint64
	for {
		select {
		case <-st.ctx.Done():
			return context.Cause(st.ctx)
		case err := <-recvDone:
			return err
		case a := <-st.out:
			if err := st.sendAnswer(a); err != nil {
				return err
			}
		case v := <-st.resend:
			// Drain answers first, so Accepted goes out before the Delta.
			if err := st.flush(); err != nil {
				return err
			}
			st.lastSent = min(st.lastSent, v)
			if err := st.refresh(); err != nil {
				return err
			}
		case <-st.changed:
			if err := st.refresh(); err != nil {
				return err
			}
		case <-resync:
			if err := st.refresh(); err != nil {
				return err
			}
		case <-st.retry:
			if err := st.refresh(); err != nil {
				return err
			}
		case <-ping.C:
			pingID++
			if err := st.gs.Send(&devicev1.SyncResponse{Message: &devicev1.SyncResponse_Ping{Ping: &devicev1.Ping{Id: pingID}}}); err != nil {
				return err
			}
		}
	}
}

// verify turns a report into the replica's form. A signed report is
// checked (signature, certificate chain, device identity, this stream's
// nonce) and taken from its envelope; an unsigned one is refused unless the
// server allows them. A non-empty reason means the report is refused with
// code: INVALID for a malformed report (an envelope with other fields set
// beside it), UNVERIFIED for one whose signature does not make it the
// device's own (unsigned, tampered, foreign-signed, another stream's).
func (st *syncStream) verify(r *devicev1.Report) (replica.Report, replica.RejectCode, string) {
	env := r.GetEnvelope()
	if len(env) == 0 {
		if st.svc.requireSigned {
			return replica.Report{JobID: r.GetJobId(), DesiredVersion: r.GetDesiredVersion()}, replica.RejectUnverified,
				"reports must be signed: send a DSSE envelope"
		}
		return reportFromProto(r), 0, ""
	}
	if set := fieldsBesideEnvelope(r); len(set) > 0 {
		return replica.Report{}, replica.RejectInvalid, fmt.Sprintf(
			"a signed report carries its content in the envelope only; %s must be empty", strings.Join(set, ", "))
	}
	// The chain was verified in this stream's TLS handshake (and revocation
	// closes the stream), so the leaf's key is the device's.
	s, err := attest.VerifyByDevice(env, st.leaf, st.svc.trustDomain)
	if err != nil {
		return replica.Report{}, replica.RejectUnverified, err.Error()
	}
	p := s.Predicate
	rep := reportFromPredicate(p)
	switch {
	case p.Device != st.id:
		return rep, replica.RejectUnverified, fmt.Sprintf("report about device %q on device %q's stream", p.Device, st.id)
	case p.Nonce != st.nonce:
		return rep, replica.RejectUnverified, "the report's nonce is not this stream's (replayed from another stream?)"
	}
	rep.Signed = &replica.Signed{Envelope: env, CertificateChain: st.chain}
	return rep, 0, ""
}

// fieldsBesideEnvelope names the fields of a signed report that are set
// beside its envelope.
func fieldsBesideEnvelope(r *devicev1.Report) []string {
	var set []string
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"job_id", r.GetJobId() != ""},
		{"desired_version", r.GetDesiredVersion() != 0},
		{"status", r.GetStatus() != 0},
		{"step", r.GetStep() != 0},
		{"error_code", r.GetErrorCode() != ""},
		{"message", r.GetMessage() != ""},
		{"reported", r.GetReported() != nil},
	} {
		if f.set {
			set = append(set, f.name)
		}
	}
	return set
}

// refresh reads the device and sends the newest Delta if it is ahead.
// refresh reads the device and sends its Delta if the device is behind.
// A store outage leaves the stream open (a quiet stream needs no store):
// the read is tried again StoreRetryDelay later.
func (st *syncStream) refresh() error {
	dev, err := st.svc.replica.GetDevice(st.ctx, st.id)
	if errors.Is(err, store.ErrUnavailable) {
		st.retry = time.After(StoreRetryDelay)
		return nil
	}
	if err != nil {
		return grpcError(st.ctx, st.log, err)
	}
	st.retry = nil
	return st.sendDeltaIfAhead(dev)
}

func (st *syncStream) sendDeltaIfAhead(dev store.Device) error {
	if dev.Desired.Version <= st.lastSent {
		return nil
	}
	delta := deltaToProto(dev)
	// The Delta is sent in the trace of the write that set the document.
	ctx, span := st.messageSpan(withTraceParent(st.ctx, dev.Desired.TraceParent), "send", "delta",
		attribute.Int64("ferry.desired.version", int64(delta.DesiredVersion)), attribute.String("ferry.job.id", delta.JobId))
	err := st.gs.Send(&devicev1.SyncResponse{Message: &devicev1.SyncResponse_Delta{Delta: delta}})
	endSpan(span, err)
	if err != nil {
		return err
	}
	st.lastSent = dev.Desired.Version
	st.svc.metrics.deltas.Inc()
	st.log.DebugContext(ctx, "delta sent", "version", delta.DesiredVersion, "job", delta.JobId)
	return nil
}

// flush sends the answers already queued.
func (st *syncStream) flush() error {
	for {
		select {
		case a := <-st.out:
			if err := st.sendAnswer(a); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// sessions tracks the open stream of each device, so that a newer stream
// replaces an older one and shutdown can end them all.
type sessions struct {
	mu     sync.Mutex
	byID   map[string]*session
	closed bool
}

type session struct {
	cancel context.CancelCauseFunc
}

func newSessions() *sessions { return &sessions{byID: make(map[string]*session)} }

// add registers a stream; an older stream of the same device is ended. The
// returned function unregisters it.
func (s *sessions) add(id string, cancel context.CancelCauseFunc) func() {
	me := &session{cancel: cancel}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel(errShuttingDown)
		return func() {}
	}
	if old := s.byID[id]; old != nil {
		old.cancel(errReplaced)
	}
	s.byID[id] = me
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.byID[id] == me {
			delete(s.byID, id)
		}
	}
}

// closeAll ends every stream and refuses new ones.
func (s *sessions) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, sess := range s.byID {
		sess.cancel(errShuttingDown)
	}
}

// count returns the number of open streams.
func (s *sessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// rejectCodeLabel is the code label of a rejected report: the proto name
// without its prefix, in lower case ("stale", "unverified"...).
func rejectCodeLabel(c replica.RejectCode) string {
	return strings.ToLower(strings.TrimPrefix(rejectCodes[c].String(), "REJECT_CODE_"))
}
