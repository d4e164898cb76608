package fleettest

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// AccessEnv is box access to one box of a fleet, as a worker has it: the
// fleet's fake AWS endpoint, host keys trusted on first use into memory,
// debug logs kept, and the box operations over it.
type AccessEnv struct {
	Fleet  *fleet.Fleet
	Box    *fleet.Box
	Access *eic.Access
	Ops    *onbox.Ops
	Target reconcile.Box
	Logs   *SyncBuffer

	mu       sync.Mutex
	recorded map[string]string // TOFU: instance -> host key
}

// NewAccess sets up box access to b in mode; edit, if set, adjusts the
// configuration first. Both are closed when the test ends.
func NewAccess(t testing.TB, f *fleet.Fleet, b *fleet.Box, mode eic.Mode, edit func(*eic.Config)) *AccessEnv {
	t.Helper()
	e := &AccessEnv{Fleet: f, Box: b, Logs: &SyncBuffer{}, recorded: map[string]string{}}
	sdk := f.AWS.SDKConfig()
	cfg := eic.Config{
		EC2:             ec2.NewFromConfig(sdk),
		InstanceConnect: ec2instanceconnect.NewFromConfig(sdk),
		Mode:            mode,
		Port:            f.Port,
		EndpointID:      "eice-0123456789abcdef0",
		EndpointURL:     f.AWS.TunnelURL(),
		Credentials:     sdk.Credentials,
		Region:          sdk.Region,
		Logger:          slog.New(slog.NewTextHandler(e.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		RecordHostKey: func(_ context.Context, id, key string) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			if old, ok := e.recorded[id]; ok && old != key {
				return errors.New("a different host key is already recorded")
			}
			e.recorded[id] = key
			return nil
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	a, err := eic.New(cfg)
	require.NoError(t, err)
	e.Access = a
	e.Ops = onbox.New(a, onbox.Config{RestartCommand: fleet.RestartCommand, IdentityCommand: fleet.IdentityCommand})
	t.Cleanup(func() { e.Ops.Close(); _ = a.Close() })
	e.Target = reconcile.Box{InstanceID: b.InstanceID, OSUser: f.User(), HostKey: b.HostKey, PluginRoot: b.PluginRoot}
	return e
}

// Recorded is the host key trusted on first use for an instance, if any.
func (e *AccessEnv) Recorded(instanceID string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.recorded[instanceID]
}

// Remember stores a host key as trusted for an instance, as a store that
// pinned it before would hold it.
func (e *AccessEnv) Remember(instanceID, hostKey string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.recorded[instanceID] = hostKey
}

// SyncBuffer is a buffer several goroutines write (a logger's output).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *SyncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// PackPlugin packs a plugin directory with a manifest and the given files
// (path -> content).
func PackPlugin(t testing.TB, name, version string, files map[string]string) []byte {
	t.Helper()
	dir := t.TempDir()
	m := reconcile.Manifest{Name: name, Version: version}
	require.NoError(t, os.WriteFile(filepath.Join(dir, reconcile.ManifestFile), m.Marshal(), 0o644))
	for p, body := range files {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644))
	}
	data, err := bundle.Pack(dir)
	require.NoError(t, err)
	return data
}
