package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/transport"
)

// identity holds the flags that say who the device is: an existing
// certificate and key, or what to enroll with.
type identity struct {
	certFile, keyFile       string
	token                   string
	factoryCert, factoryKey string
}

func (i *identity) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&i.certFile, "cert", envOr("FERRY_DEVICE_CERT", ""), "the device's existing certificate, PEM (with --key; no enrollment) [$FERRY_DEVICE_CERT]")
	f.StringVar(&i.keyFile, "key", envOr("FERRY_DEVICE_KEY", ""), "the key of --cert, PEM [$FERRY_DEVICE_KEY]")
	f.StringVar(&i.token, "enrollment-token", envOr("FERRY_ENROLLMENT_TOKEN", ""), "one-time enrollment token (first start) [$FERRY_ENROLLMENT_TOKEN]")
	f.StringVar(&i.factoryCert, "factory-cert", envOr("FERRY_FACTORY_CERT", ""), "factory certificate to enroll with, PEM [$FERRY_FACTORY_CERT]")
	f.StringVar(&i.factoryKey, "factory-key", envOr("FERRY_FACTORY_KEY", ""), "its key, PEM [$FERRY_FACTORY_KEY]")
}

// credentials returns the device's credentials and the function that saves
// them after a renewal. With --cert and --key those files are the device's
// credentials and renewals replace them; otherwise the credentials live in
// stateDir and are made by enrolling on the first start.
func (i *identity) credentials(ctx context.Context, link *transport.Link, stateDir string) (*agent.Credentials, func(*agent.Credentials) error, error) {
	if (i.certFile == "") != (i.keyFile == "") {
		return nil, nil, errors.New("give both --cert and --key (the device's certificate and its key)")
	}
	if i.certFile != "" {
		if i.token != "" || i.factoryCert != "" {
			return nil, nil, errors.New("--cert and --key are a device's existing credentials: leave out --enrollment-token and --factory-cert")
		}
		creds, err := agent.LoadCredentials(i.keyFile, i.certFile)
		if err != nil {
			return nil, nil, fmt.Errorf("%w (from --cert %s and --key %s)", err, i.certFile, i.keyFile)
		}
		return creds, func(c *agent.Credentials) error { return c.Save(i.keyFile, i.certFile) }, nil
	}
	keyPath, certPath := filepath.Join(stateDir, agent.KeyFile), filepath.Join(stateDir, agent.CertFile)
	save := func(c *agent.Credentials) error { return c.Save(keyPath, certPath) }
	if _, err := os.Stat(certPath); err != nil && i.token == "" && i.factoryCert == "" {
		return nil, nil, fmt.Errorf("%s holds no device certificate yet: enroll with --enrollment-token (from `ferryctl device add <id>`) "+
			"or --factory-cert and --factory-key, or give an existing certificate with --cert and --key", stateDir)
	}
	enroller := transport.Enroller{Link: link}
	if i.factoryCert != "" {
		pair, err := tls.LoadX509KeyPair(i.factoryCert, i.factoryKey)
		if err != nil {
			return nil, nil, fmt.Errorf("factory certificate: %w", err)
		}
		enroller.FactoryCert = &pair
	}
	creds, err := agent.LoadOrEnroll(ctx, stateDir, enroller, i.token)
	if err != nil {
		return nil, nil, err
	}
	return creds, save, nil
}
