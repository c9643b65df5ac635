package server

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // substring of the error; "" for valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"redis", func(c *Config) { c.RedisURL = "redis://localhost:6379/0" }, ""},
		{"all TLS files", func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.DeviceCAFile, c.OperatorKeysFile = "c", "k", "ca", "ops"
		}, ""},
		{"some TLS files", func(c *Config) { c.TLSCertFile = "c" }, "go together"},
		{"bad device address", func(c *Config) { c.DeviceAddr = "8444" }, "device address"},
		{"bad API address", func(c *Config) { c.APIAddr = "" }, "API address"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data directory"},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "a/b" }, "trust domain"},
		{"bad dev device", func(c *Config) { c.Dev.Devices = []string{"../x"} }, "development device"},
		{"tiny messages", func(c *Config) { c.Device.MaxMessageBytes = 10 }, "max message size"},
		{"no rate", func(c *Config) { c.Device.MessagesPerSecond = 0 }, "rate limit"},
		{"keepalive inverted", func(c *Config) { c.Device.KeepaliveTime = c.Device.KeepaliveMinTime / 2 }, "keepalive"},
		{"no shutdown time", func(c *Config) { c.ShutdownTimeout = 0 }, "shutdown timeout"},
	}
	for _, tt := range tests {
		cfg := DefaultConfig()
		tt.edit(&cfg)
		err := cfg.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: error %v, want one about %q", tt.name, err, tt.want)
		}
	}
}
