package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"
)

// ConsentSocket is a Consenter that asks an application on the device
// which listens on a Unix socket (a kiosk's user interface, a vehicle's
// controller). For each request the agent connects and writes one JSON
// line:
//
//	{"action":"install","job_id":"job-…","desired_version":3,
//	 "target_path":"gw/2.0.0/fw.bin","version":"2.0.0",
//	 "deadline":"2026-12-04T02:00:00Z"}
//
// (target_path and version for a bundle, deadline when deferring ends),
// and reads one line back in the consent hook's syntax: "accept [who]",
// "later [duration] [who]" or "decline [who]". The application may keep
// the connection open until its user answers.
type ConsentSocket struct {
	Path string
}

type consentQuestion struct {
	Action         string `json:"action"`
	JobID          string `json:"job_id"`
	DesiredVersion uint64 `json:"desired_version"`
	TargetPath     string `json:"target_path,omitempty"`
	Version        string `json:"version,omitempty"`
	Deadline       string `json:"deadline,omitempty"`
}

// Ask implements Consenter.
func (s ConsentSocket) Ask(ctx context.Context, req ConsentRequest) (ConsentAnswer, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", s.Path)
	if err != nil {
		return ConsentAnswer{}, fmt.Errorf("consent socket: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	q := consentQuestion{Action: req.Action, JobID: req.Job.ID, DesiredVersion: req.Job.DesiredVersion, Version: req.Job.Version}
	if b := req.Job.Bundle; b != nil {
		q.TargetPath = b.TargetPath
	}
	if !req.Deadline.IsZero() {
		q.Deadline = req.Deadline.UTC().Format(time.RFC3339)
	}
	line, err := json.Marshal(q)
	if err != nil {
		return ConsentAnswer{}, fmt.Errorf("consent socket: %w", err)
	}
	if _, err := conn.Write(append(line, '\n')); err != nil {
		return ConsentAnswer{}, fmt.Errorf("consent socket: %w", err)
	}
	answer, err := bufio.NewReader(io.LimitReader(conn, 4<<10)).ReadString('\n')
	if ctx.Err() != nil {
		return ConsentAnswer{}, ctx.Err()
	}
	if err != nil && (err != io.EOF || answer == "") {
		return ConsentAnswer{}, fmt.Errorf("consent socket: no answer: %w", err)
	}
	return ParseConsentAnswer(answer)
}
