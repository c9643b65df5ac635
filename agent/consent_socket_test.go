package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/agent"
)

// TestConsentSocket asks an application listening on a real Unix socket:
// it reads the question, and its answer is parsed; an application that
// does not listen, or hangs up without answering, is an error.
func TestConsentSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "consent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	questions := make(chan map[string]any, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(conn).ReadString('\n')
			var q map[string]any
			json.Unmarshal([]byte(line), &q)
			questions <- q
			switch q["action"] {
			case "install":
				conn.Write([]byte("later 5m kiosk\n"))
			case "reboot":
				conn.Write([]byte("accept driver " + q["job_id"].(string) + "\n"))
			}
			conn.Close() // anything else: hang up without an answer
		}
	}()
	s := agent.ConsentSocket{Path: path}
	deadline := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	job := agent.Job{ID: "job-7", DesiredVersion: 2, Bundle: &agent.Bundle{TargetPath: "gw/fw.bin"}, Version: "2.0.0"}
	tests := []struct {
		action  string
		want    agent.ConsentAnswer
		wantErr string
	}{
		{agent.ConsentInstall, agent.ConsentAnswer{Decision: agent.DecisionDeferred, Later: 5 * time.Minute, Actor: "kiosk"}, ""},
		{agent.ConsentReboot, agent.ConsentAnswer{Decision: agent.DecisionAccepted, Actor: "driver job-7"}, ""},
		{"other", agent.ConsentAnswer{}, "no answer"},
	}
	for _, tt := range tests {
		got, err := s.Ask(t.Context(), agent.ConsentRequest{Action: tt.action, Job: job, Deadline: deadline})
		q := <-questions
		if q["action"] != tt.action || q["job_id"] != "job-7" || q["target_path"] != "gw/fw.bin" || q["version"] != "2.0.0" ||
			q["deadline"] != deadline.Format(time.RFC3339) || q["desired_version"] != float64(2) {
			t.Errorf("%s: the application was asked %v", tt.action, q)
		}
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want %q", tt.action, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v", tt.action, got, err, tt.want)
		}
	}
	if _, err := (agent.ConsentSocket{Path: filepath.Join(t.TempDir(), "none.sock")}).Ask(t.Context(), agent.ConsentRequest{Action: "install", Job: job}); err == nil {
		t.Error("asking a socket nobody listens on succeeded")
	}
	// An application that never answers: Ask returns when ctx ends.
	silent := filepath.Join(t.TempDir(), "silent.sock")
	ln2, err := net.Listen("unix", silent)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	hangUp := make(chan struct{})
	defer close(hangUp)
	go func() {
		conn, err := ln2.Accept()
		if err == nil {
			defer conn.Close()
			bufio.NewReader(conn).ReadString('\n')
			<-hangUp
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := (agent.ConsentSocket{Path: silent}).Ask(ctx, agent.ConsentRequest{Action: "install", Job: job}); err == nil {
		t.Error("a silent application's answer came out of nowhere")
	}
}
