package agent

import (
	"os"
	"strings"

	"github.com/ferryhq/ferry/inventory"
)

// attributes is what the device reports about itself in Hello: its
// hardware model, agent version, operating system and kernel, each left
// out when unknown or not a valid attribute value.
func (a *Agent) attributes() map[string]string {
	out := map[string]string{}
	put := func(k, v string) {
		if v = strings.TrimSpace(v); v != "" && inventory.ValidValue(v) == nil {
			out[k] = v
		}
	}
	put(inventory.Hardware, a.cfg.Hardware)
	put(inventory.AgentVersion, strings.TrimPrefix(a.cfg.AgentVersion, "ferry-agent/"))
	put(inventory.OS, osRelease("/etc/os-release"))
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		put(inventory.Kernel, string(raw))
	}
	return out
}

// osRelease returns "<ID>-<VERSION_ID>" of an os-release file ("" when
// unreadable).
func osRelease(path string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var id, ver string
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			id = v
		case "VERSION_ID":
			ver = v
		}
	}
	if id == "" || ver == "" {
		return id
	}
	return id + "-" + ver
}
